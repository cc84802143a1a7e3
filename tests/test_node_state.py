"""A node's own state on its own disk: it survives a restart of the node and a resume of the run, a foreign
file is refused, and a lost privacy count is never counted from zero.

The nodes here are the LocalGrid's, given a ``state-dir`` as ``ffm deploy supernode`` gives each SuperNode;
the server runs with the Grid-API-only carrier, as on a Flower federation, so that nothing but the nodes'
own files carries their state across a restart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from ffm.carrier import FederationCarrier
from ffm.client import app as client_app
from ffm.config import job_to_run_config
from ffm.keys import CONFIG_KEY, RUN_ID_KEY, SERVER_ROUND
from ffm.node_state import STATE_DIR, NodeStateError, NodeStateFile, keep_node_state, state_was_lost
from ffm.runtime import LocalGrid
from ffm.server import run_job


def _grid(job, states: Path) -> LocalGrid:
    """Fresh nodes (empty memory, as after a restart) that keep their state under ``states``/pK."""
    return LocalGrid(client_app, num_nodes=job.federation.num_clients, run_config=job_to_run_config(job),
                     node_configs={p: {STATE_DIR: str(states / f"p{p}")} for p in range(job.federation.num_clients)})


def _run(job, states: Path) -> dict:
    return run_job(_grid(job, states), job, carrier=FederationCarrier())


def _interrupted(job, states: Path, monkeypatch: pytest.MonkeyPatch, at_train_call: int) -> None:
    """Run until the ``at_train_call``-th client training starts, and kill the run there (mid-round)."""
    import ffm.client

    calls, real = {"n": 0}, ffm.client.train_steps

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_train_call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ffm.client, "train_steps", dies)
        with pytest.raises(KeyboardInterrupt):
            _run(job, states)


def _saved(states: Path, party: int) -> dict:
    files = list((states / f"p{party}").glob("run-*.pt"))
    assert len(files) == 1, files
    return torch.load(files[0], weights_only=True)


def _checkpoint(job, server_round: int) -> dict[str, torch.Tensor]:
    return torch.load(Path(job.run_dir) / "checkpoints" / f"round-{server_round:06d}.pt", weights_only=True)["state"]


def _clients(job) -> list[list[dict]]:
    lines = [json.loads(line) for line in (Path(job.run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [line.get("clients", []) for line in lines if line["round"] > 0]


def test_nodes_restarted_mid_round_continue_from_their_disk_and_the_resumed_run_ends_bit_identical(
        job_factory, tmp_path, monkeypatch):
    overrides = {"strategy__name": "scaffold", "train__optimizer": "sgd", "train__lr": 0.05,
                 "method__personal": ["classifier"], "federation__rounds": 3}
    straight = job_factory("straight", **overrides)
    _run(straight, tmp_path / "straight-states")
    broken = job_factory("broken", **overrides)
    # killed as the third client of round 2 starts: two nodes had already trained round 2 and saved it
    _interrupted(broken, tmp_path / "states", monkeypatch, at_train_call=6)
    assert max(_saved(tmp_path / "states", 0)["snapshots"]) == 2
    broken.resume = True

    _run(broken, tmp_path / "states")  # fresh nodes: only their files carry SCAFFOLD's c_i and the heads

    a, b = _checkpoint(straight, 3), _checkpoint(broken, 3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for party in range(3):
        mine, theirs = _saved(tmp_path / "straight-states", party), _saved(tmp_path / "states", party)
        assert sorted(mine["snapshots"]) == sorted(theirs["snapshots"]) == [2, 3]
        for key, record in mine["snapshots"][3].items():  # the control variate and the personal head
            for name, tensor in record["items"].items():
                assert torch.equal(tensor, theirs["snapshots"][3][key]["items"][name]), (party, key, name)


def test_a_replayed_round_restores_the_state_before_it_but_keeps_counting_the_privacy_it_spent(
        job_factory, tmp_path, monkeypatch):
    overrides = {"privacy__dp_sgd": True, "method__personal": ["classifier"], "federation__rounds": 2}
    straight = job_factory("straight", **overrides)
    _run(straight, tmp_path / "straight-states")
    broken = job_factory("broken", **overrides)
    _interrupted(broken, tmp_path / "states", monkeypatch, at_train_call=5)  # one party trained round 2, then the end
    (twice,) = [p for p in range(3) if max(_saved(tmp_path / "states", p)["snapshots"]) == 2]
    broken.resume = True

    summary = _run(broken, tmp_path / "states")

    a, b = _checkpoint(straight, 2), _checkpoint(broken, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the model: as if nothing happened
    steps = {c["partition_id"]: c["dp_sgd_steps"] for c in _clients(broken)[-1]}
    assert steps == {p: 6 if p == twice else 4 for p in range(3)}  # its round 2 twice: 3 x 2 steps, all counted
    straight_eps = {c["partition_id"]: c["dp_sgd_epsilon"] for c in _clients(straight)[-1]}
    once = (twice + 1) % 3
    assert summary["dp_sgd"]["epsilon_per_party"][str(twice)] > straight_eps[twice]
    assert summary["dp_sgd"]["epsilon_per_party"][str(once)] == pytest.approx(straight_eps[once])


def test_a_node_that_lost_its_state_assumes_it_trained_every_earlier_round_and_the_summary_says_so(
        job_factory, tmp_path):
    job = job_factory("run", privacy__dp_sgd=True)
    _run(job, tmp_path / "states")
    for file in (tmp_path / "states").glob("p*/run-*.pt"):
        file.unlink()  # a node's disk wiped while it was down
    resumed = job_factory("run", privacy__dp_sgd=True, federation__rounds=3)
    resumed.resume = True

    summary = _run(resumed, tmp_path / "states")

    assert [c["dp_sgd_steps"] for c in _clients(resumed)[-1]] == [6, 6, 6]  # never 2: not counted from zero
    assert summary["dp_sgd"]["assumed_counts"] == [
        {"round": 3, "partition_id": p, "steps": 4} for p in range(3)]


def test_with_sgd_lost_count_refuse_a_node_without_its_count_refuses_to_train_naming_the_file(job_factory, tmp_path):
    job = job_factory("run", privacy__dp_sgd=True, privacy__sgd_lost_count="refuse")
    _run(job, tmp_path / "states")
    (wiped,) = (tmp_path / "states" / "p1").glob("run-*.pt")
    wiped.unlink()
    resumed = job_factory("run", privacy__dp_sgd=True, privacy__sgd_lost_count="refuse", federation__rounds=3)
    resumed.resume = True

    _run(resumed, tmp_path / "states")

    last = [json.loads(line) for line in (Path(job.run_dir) / "metrics.jsonl").read_text().splitlines()][-1]
    assert [c["partition_id"] for c in last["clients"]] == [0, 2]
    (refusal,) = last["rejected"]
    assert "refuses to train" in refusal["reason"] and str(wiped) in refusal["reason"]


def _train_message(run: str, server_round: int) -> Message:
    content = RecordDict({CONFIG_KEY: ConfigRecord({RUN_ID_KEY: run, SERVER_ROUND: server_round})})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def _node(states: Path, partition: int = 0) -> Context:
    return Context(run_id=1, node_id=1, node_config={STATE_DIR: str(states), "partition-id": partition},
                   state=RecordDict(), run_config={})


def _echo(msg: Message, context: Context) -> Message:
    return Message(RecordDict(), reply_to=msg)


def test_a_state_file_of_another_partition_is_refused_with_one_line_naming_it(tmp_path):
    NodeStateFile(tmp_path, "run-a", partition=1).write({1: {}}, {})  # the dir of partition 1, given to node 0

    with pytest.raises(NodeStateError) as refused:
        keep_node_state(_train_message("run-a", 2), _node(tmp_path, partition=0), _echo)

    message = str(refused.value)
    assert "\n" not in message and str(tmp_path / "run-run-a.pt") in message and "partition 1" in message


def test_a_state_file_renamed_from_another_run_is_refused(tmp_path):
    NodeStateFile(tmp_path, "old", partition=0).write({1: {}}, {})
    (tmp_path / "run-old.pt").rename(tmp_path / "run-new.pt")

    with pytest.raises(NodeStateError, match="belongs to run old"):
        keep_node_state(_train_message("new", 2), _node(tmp_path), _echo)


def test_an_unreadable_state_file_is_moved_aside_and_the_node_goes_on_as_one_that_lost_its_state(tmp_path):
    (tmp_path / "run-r.pt").write_bytes(b"torn write")
    context = _node(tmp_path)

    keep_node_state(_train_message("r", 3), context, _echo)

    assert (tmp_path / "run-r.pt.unreadable").read_bytes() == b"torn write"
    assert state_was_lost(context) == ""  # the round trained and saved: the next one finds its state
    assert sorted(NodeStateFile(tmp_path, "r", 0).read()["snapshots"]) == [3]


def test_the_first_round_finds_no_file_and_that_is_no_loss(tmp_path):
    seen = {}

    def look(msg: Message, context: Context) -> Message:
        seen["lost"] = state_was_lost(context)
        return _echo(msg, context)

    keep_node_state(_train_message("r", 1), _node(tmp_path), look)
    keep_node_state(_train_message("r", 2), context := _node(tmp_path), look)  # a restarted node: memory empty

    assert seen["lost"] == "" and "round" in dict(context.state.config_records["ffm-node-state"])


def test_secure_aggregation_secrets_of_the_round_are_never_written_to_disk(tmp_path):
    from flwr.app import ConfigRecord as Record

    def mods_keep_secrets(msg: Message, context: Context) -> Message:
        context.state["round-secagg"] = Record({"s-sk": b"secret"})
        context.state["personal"] = Record({"kept": 1})
        return _echo(msg, context)

    keep_node_state(_train_message("r", 1), _node(tmp_path), mods_keep_secrets)

    saved = NodeStateFile(tmp_path, "r", 0).read()["snapshots"][1]
    assert "personal" in saved and "round-secagg" not in saved
