"""federation.ema: the server's moving average of the rounds' global models, evaluated and saved beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_state, run_interrupted

from ffm.averaging import ModelAverage
from ffm.errors import ConfigError
from ffm.run_dir import RunDirectory
from ffm.runtime import run_local
from ffm.workspace import workspace_for


def _lines(run_dir: str) -> list[dict]:
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("wall_time_s", None)
        for client in line.get("clients", []):
            client.pop("train_seconds", None)
    return lines


def _saved_average(run_dir: str, server_round: int) -> dict:
    path = RunDirectory(run_dir).checkpoint_path(server_round)
    return torch.load(path, weights_only=True)["extra"]["average"]


def test_the_average_is_the_plain_mean_until_one_over_one_minus_decay_models_then_exponential():
    average = ModelAverage(0.75)  # the plain mean of the first 4 models, then 0.75 x average + 0.25 x model
    for value in (1.0, 2.0, 3.0, 6.0):
        average.update({"w": torch.tensor([value]), "steps": torch.tensor([int(value)])})
    assert average.state()["w"].item() == pytest.approx(3.0)
    assert average.state()["steps"].item() == 6  # a counter is taken as it is, not averaged

    average.update({"w": torch.tensor([7.0]), "steps": torch.tensor([7])})
    assert average.state()["w"].item() == pytest.approx(0.75 * 3.0 + 0.25 * 7.0)


def test_a_model_of_other_shapes_starts_the_average_again():
    average = ModelAverage(0.5)
    average.update({"head": torch.zeros(2)})
    average.update({"head": torch.ones(3)})  # a continual stream's grown head
    assert torch.equal(average.state()["head"], torch.ones(3)) and average.count == 1


def test_a_run_evaluates_and_saves_the_average_of_its_rounds_global_models(job_factory):
    job = job_factory(federation__rounds=3, federation__ema=0.5, federation__fraction_evaluate=0.0)
    summary, _ = run_local(job)

    states = [checkpoint_state(job.run_dir, r) for r in (1, 2, 3)]
    expected = {k: 0.5 * (0.5 * (states[0][k] + states[1][k])) + 0.5 * states[2][k] for k in states[0]}
    saved = _saved_average(job.run_dir, 3)["average"]
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value)
    assert not all(torch.equal(saved[k], states[2][k]) for k in saved)  # the average is not the last model

    lines = {line["round"]: line for line in _lines(job.run_dir)}
    assert lines[1]["test_ema_accuracy"] == lines[1]["test_accuracy"]  # the average of one model is that model
    assert "test_ema_accuracy" not in lines[0]  # nothing is released before round 1
    workspace = workspace_for(job)
    workspace.load(expected)
    again = workspace.task.evaluate(workspace.model, workspace.examples("test"), job.train.eval_batch_size)
    assert lines[3]["test_ema_loss"] == pytest.approx(again["loss"], rel=1e-5)
    assert summary["ema"]["final_test_ema_accuracy"] == lines[3]["test_ema_accuracy"]
    assert (Path(job.run_dir) / "final" / "ema" / "adapter_config.json").exists()


def test_a_resumed_run_goes_on_with_the_same_average(job_factory, monkeypatch):
    overrides = {"federation__rounds": 3, "federation__fraction_train": 0.67, "federation__ema": 0.6}
    straight = job_factory("straight", **overrides)
    run_local(straight)
    broken = job_factory("broken", **overrides)
    run_interrupted(broken, monkeypatch, at_train_call=2 * 2 + 1)  # in round 3, after two checkpointed rounds
    broken.resume = True
    run_local(broken)

    a, b = _saved_average(straight.run_dir, 3), _saved_average(broken.run_dir, 3)
    assert a["count"] == b["count"] == 3
    assert all(torch.equal(a["average"][k], b["average"][k]) for k in a["average"])
    assert _lines(straight.run_dir) == _lines(broken.run_dir)


@pytest.mark.parametrize(("overrides", "named"), [
    ({"federation__ema": 1.0}, "federation.ema must be in [0, 1)"),
    ({"federation__ema": 0.9, "mode": "local"}, "mode=local makes none: set federation.ema=0"),
])
def test_an_average_that_cannot_be_taken_is_refused_at_config_time(job_factory, overrides, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace(")", r"\)")):
        job_factory(**overrides)
