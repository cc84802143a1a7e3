"""End to end on the tiny model: every mode runs through the ServerApp, LocalGrid and ClientApp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffm.runtime import run_local


@pytest.mark.parametrize("mode", ["federated", "centralized", "local"])
def test_each_mode_runs_and_writes_a_complete_run_directory(job_factory, mode):
    job = job_factory(mode=mode)

    summary, _ = run_local(job)

    run = job.run_dir
    lines = [json.loads(x) for x in open(f"{run}/metrics.jsonl")]
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert all(0.0 <= line["test_accuracy"] <= 1.0 for line in lines)
    assert summary["rounds"] == 2 and summary["mode"] == mode
    assert sorted(p.name for p in (Path(run) / "checkpoints").iterdir()) == ["round-000001.pt", "round-000002.pt"]
    assert (Path(run) / "config.yaml").is_file() and (Path(run) / "summary.json").is_file()


def test_local_baseline_keeps_and_saves_each_model_by_partition_id_not_node_id(job_factory, carried):
    from flwr.app import MessageType

    job = job_factory(mode="local")

    run_local(job)

    lines = [json.loads(x) for x in open(f"{job.run_dir}/metrics.jsonl")]
    assert sorted(lines[-1]["test_accuracy_per_client"]) == ["0", "1", "2"]
    assert sorted(p.name for p in (Path(job.run_dir) / "final").iterdir()) == ["client-0", "client-1", "client-2"]
    # every node got back the state that its own partition sent in the round before
    sent_by = {}
    for msg, reply in carried:
        if msg.metadata.message_type != MessageType.TRAIN:
            continue
        partition = reply.content["client"]["partition-id"]
        if partition in sent_by:
            received = msg.content["arrays"].to_torch_state_dict()
            assert all((received[k] == sent_by[partition][k]).all() for k in received)
        sent_by[partition] = reply.content["arrays"].to_torch_state_dict()
    assert len(sent_by) == 3


def test_a_federated_run_shows_what_each_client_holds_before_it_trains(job_factory):
    from ffm.partition_report import report_partition
    from ffm.workspace import workspace_for

    job = job_factory(data__partitioner="dirichlet", data__alpha=0.3)
    run_local(job)

    table = report_partition(workspace_for(job).data, Path(job.run_dir))
    assert (Path(job.run_dir) / "partition.png").stat().st_size > 1000
    assert table.splitlines()[0] == "examples per client and label:"
    assert len(table.splitlines()) == 2 + 3  # header, label names, one row per client
