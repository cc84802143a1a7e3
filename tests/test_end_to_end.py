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
    assert sorted(p.name for p in (Path(run) / "checkpoints").iterdir()) == ["round-0001.pt", "round-0002.pt"]
    assert (Path(run) / "config.yaml").is_file() and (Path(run) / "summary.json").is_file()
