"""What a run leaves behind and what it promises: resume equality, the saved adapter, the frozen base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_interrupted
from peft import PeftModel

from ffm.errors import ConfigError
from ffm.run_dir import RunDirectory
from ffm.runtime import LocalGrid, run_local
from ffm.workspace import workspace_for


def _checkpoint(run_dir: str, server_round: int) -> dict[str, torch.Tensor]:
    return torch.load(RunDirectory(run_dir).checkpoint_path(server_round), weights_only=True)["state"]


def _lines(run_dir: str) -> list[dict]:
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    for line in lines:  # timings are the one thing two runs never share
        line.pop("wall_time_s", None)
        for client in line.get("clients", []):
            client.pop("train_seconds", None)
    return lines


def test_round_aggregate_is_the_weighted_mean_of_what_the_clients_sent(job_factory, monkeypatch):
    replies = []
    deliver = LocalGrid._deliver
    monkeypatch.setattr(LocalGrid, "_deliver", lambda self, msg: replies.append(deliver(self, msg)) or replies[-1])
    job = job_factory(federation__rounds=1, federation__fraction_evaluate=0.0)

    run_local(job)

    weights = [r.content["metrics"]["num-examples"] for r in replies]
    states = [r.content["arrays"].to_torch_state_dict() for r in replies]
    aggregate = _checkpoint(job.run_dir, 1)
    for name, value in aggregate.items():
        expected = sum(w * s[name] for w, s in zip(weights, states, strict=True)) / sum(weights)
        torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("mode", ["federated", "local"])
def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(job_factory, monkeypatch, mode):
    overrides = {"mode": mode, "federation__rounds": 3, "federation__fraction_train": 0.67}
    straight = job_factory("straight", **overrides)
    run_local(straight)

    per_round = 3 if mode == "local" else 2  # local: every client trains; federated: int(3 * 0.67) sampled
    broken = job_factory("broken", **overrides)
    run_interrupted(broken, monkeypatch, at_train_call=2 * per_round + 1)  # the first client of round 3
    done_before = max(int(p.stem[-4:]) for p in (Path(broken.run_dir) / "checkpoints").glob("round-*.pt"))
    assert done_before == 2

    broken.resume = True
    run_local(broken)

    final_a, final_b = _checkpoint(straight.run_dir, 3), _checkpoint(broken.run_dir, 3)
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert _lines(straight.run_dir) == _lines(broken.run_dir)


def test_final_state_loads_with_peft_from_pretrained_and_predicts_the_same(job_factory, tiny_model_dir):
    job = job_factory()
    run_local(job)
    workspace = workspace_for(job)
    final = _checkpoint(job.run_dir, 2)

    base = workspace.task.build_model(job.model, workspace.data.label_names, workspace.tokenizer, seed=123)
    loaded = PeftModel.from_pretrained(base, Path(job.run_dir) / "final").eval()

    restored = {n: p for n, p in loaded.named_parameters() if n in final}
    assert restored.keys() == final.keys()
    assert all(torch.equal(restored[n], final[n]) for n in final)
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    workspace.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, workspace.model(**batch).logits)


def test_training_leaves_the_frozen_base_bitwise_unchanged_and_shared(job_factory):
    job = job_factory()
    workspace = workspace_for(job)
    frozen = {n: p.detach().clone() for n, p in workspace.model.named_parameters() if not p.requires_grad}
    pointers = {n: p.data_ptr() for n, p in workspace.model.named_parameters()}

    run_local(job)

    assert workspace_for(job) is workspace  # one backbone for the server and every virtual client
    after = dict(workspace.model.named_parameters())
    assert all(torch.equal(after[n], value) for n, value in frozen.items())
    assert {n: p.data_ptr() for n, p in after.items()} == pointers
    assert len(frozen) > 0 and all("lora_" not in n for n in frozen)


def test_checkpoint_names_sort_past_round_9999_and_keep_last_keeps_the_newest(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)

    for server_round in (9998, 9999, 10000, 10001):
        run.save_checkpoint(server_round, {"w": torch.tensor([float(server_round)])}, keep_last=2)

    names = sorted(p.name for p in run.checkpoints.iterdir())
    assert names == ["round-010000.pt", "round-010001.pt"]  # name order is round order
    assert run.latest_checkpoint()["round"] == 10001


def test_a_run_resumes_from_checkpoints_named_the_old_four_digit_way(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    for server_round in (9, 10):
        torch.save({"round": server_round, "state": {}, "extra": {}}, run.checkpoints / f"round-{server_round:04d}.pt")

    assert run.latest_checkpoint()["round"] == 10


def test_a_run_interrupted_before_its_first_checkpoint_resumes_with_one_line_per_round(job_factory, monkeypatch):
    job = job_factory()
    run_interrupted(job, monkeypatch, at_train_call=1)  # round 0 was evaluated and logged, round 1 never ended

    job.resume = True
    run_local(job)

    assert [line["round"] for line in _lines(job.run_dir)] == [0, 1, 2]


def test_resuming_under_a_config_that_changes_the_computation_is_refused_naming_the_keys(job_factory):
    job = job_factory(federation__rounds=1)
    run_local(job)
    changed = job_factory(federation__rounds=2, train__lr=0.5, resume=True)

    with pytest.raises(ConfigError, match=r"train\.lr: 0\.01 -> 0\.5"):
        run_local(changed)

    longer = job_factory(federation__rounds=2, resume=True)  # more rounds is what resume is for
    summary, _ = run_local(longer)
    assert summary["rounds"] == 2
