"""Where a run reports: metrics.jsonl always; TensorBoard and MLflow when ``report.to`` names them; any registered
observer gets every round's line, the server's timings and the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest

from ffm.errors import ConfigError
from ffm.observers import OBSERVERS, Observer, scalars_of
from ffm.runtime import run_local

pytestmark = pytest.mark.xdist_group("toy_plugins")  # registers an observer in this process


def _lines(run_dir: str) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_and_mlflow_get_every_rounds_metrics(job_factory):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = job_factory("tracked", report__to=["tensorboard", "mlflow"])

    run_local(job)

    expected = [line["test_accuracy"] for line in _lines(job.run_dir)]
    events = EventAccumulator(str(Path(job.run_dir) / "tensorboard"))
    events.Reload()
    board = [(e.step, e.value) for e in events.Scalars("test_accuracy")]
    assert [step for step, _ in board] == [0, 1, 2]
    assert [value for _, value in board] == pytest.approx(expected)
    client = MlflowClient(tracking_uri=f"sqlite:///{(Path(job.run_dir) / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("ffm").experiment_id])
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.value for m in history] == pytest.approx(expected)
    assert run.data.params["train.lr"] == str(job.train.lr)
    assert run.info.status == "FINISHED"


class _Recorder(Observer):
    events: ClassVar[list] = []

    def round(self, line: dict) -> None:
        _Recorder.events.append(("round", line["round"]))

    def timing(self, server_round: int, seconds: dict[str, float]) -> None:
        _Recorder.events.append(("timing", server_round, sorted(seconds)))

    def finish(self, summary: dict) -> None:
        _Recorder.events.append(("finish", summary["rounds"]))


def test_a_registered_observer_gets_lines_timings_and_the_summary_in_order(job_factory):
    OBSERVERS.register("test_recorder", _Recorder)
    try:
        _Recorder.events = []
        run_local(job_factory("recorded", report__to=["test_recorder"]))
    finally:
        OBSERVERS.unregister("test_recorder")

    parts = ["between", "checkpoint", "evaluate"]
    assert _Recorder.events == [("round", 0), ("timing", 0, parts), ("round", 1), ("timing", 1, parts),
                                ("round", 2), ("timing", 2, parts), ("finish", 2)]


def test_an_unknown_tracker_is_a_config_error_that_lists_the_known_ones(job_factory):
    with pytest.raises(ConfigError, match=r"report\.to: .wandb. is not one of mlflow, tensorboard"):
        job_factory(report__to=["wandb"])


def test_scalars_are_the_numbers_of_a_line_with_nested_keys_joined():
    line = {"round": 3, "test_accuracy": 0.5, "val": {"val_loss": 1.25}, "clients": [{"x": 1}], "failed": "no",
            "ok": True}

    assert scalars_of(line) == {"test_accuracy": 0.5, "val/val_loss": 1.25}
