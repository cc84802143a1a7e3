"""Continual federated learning: streams of stages, what each method keeps, and the accuracy matrix."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_state
from flwr.app import RecordDict

from ffm.config import load_job
from ffm.continual.matrix import transfer
from ffm.continual.replay import BUFFER_KEY, remember
from ffm.continual.stream import split_stream, stage_of
from ffm.data import load_source
from ffm.errors import ConfigError
from ffm.evaluation import Evaluator
from ffm.run_dir import RunDirectory
from ffm.runtime import run_local
from ffm.tasks import Examples
from ffm.workspace import build_workspace

CLASS_STREAM = {"continual__kind": "class_incremental", "continual__stages": 2,
                "continual__classes": ["business|entertainment", "sports|tech"]}


def test_a_class_incremental_stream_is_disjoint_by_stage_party_and_split(job_factory):
    job = job_factory(**CLASS_STREAM, federation__rounds=2)
    stages = split_stream(load_source(job.data), job)
    names = stages[0].label_names
    assert names == ["business", "entertainment", "sports", "tech"]  # politics is in no stage
    seen: dict[str, tuple] = {}
    for k, stage in enumerate(stages):
        parts = {("test",): stage.test} | {(p, split): getattr(c, split) for p, c in enumerate(stage.clients)
                                           for split in ("train", "val")}
        for where, ds in parts.items():
            assert {names[label] for label in ds["label"]} <= set(job.continual.classes[k].split("|"))
            for text in ds["text"]:
                assert text not in seen, f"{where} of stage {k} repeats an example of {seen[text]}"
                seen[text] = (k, where)
    assert all(len(c.train) > 0 for stage in stages for c in stage.clients)


def test_rounds_follow_stages_and_the_joint_bound_has_none(job_factory):
    job = job_factory(**CLASS_STREAM, federation__rounds=4)
    assert [stage_of(job, r) for r in (1, 2, 3, 4)] == [0, 0, 1, 1]
    joint = job_factory(**CLASS_STREAM, federation__rounds=4, continual__approach="joint")
    assert stage_of(joint, 3) is None


def test_stream_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"multiple of continual\.stages"):
        load_job(None, ["continual.kind=class_incremental", "continual.stages=3", "federation.rounds=4"])
    with pytest.raises(ConfigError, match=r"strategy\.name=fedadam keeps server state"):
        load_job(None, ["continual.kind=class_incremental", "continual.stages=2", "federation.rounds=2",
                        "strategy.name=fedadam"])
    with pytest.raises(ConfigError, match=r"continual\.parties names 1 stages"):
        load_job(None, ["continual.kind=domain_incremental", "continual.stages=2", "federation.rounds=2",
                        "continual.parties=0-3"])


def test_transfer_figures_of_a_known_matrix():
    rows = [[0.9, 0.1, 0.2], [0.5, 0.8, 0.3], [0.4, 0.6, 0.7]]
    out = transfer(rows, initial=[0.3, 0.1, 0.1])
    assert out["average"] == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    assert out["backward_transfer"] == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)
    assert out["forward_transfer"] == pytest.approx(((0.1 - 0.1) + (0.3 - 0.1)) / 2)


def test_the_head_grows_each_stage_and_its_updates_pass_the_guard(job_factory, carried):
    job = job_factory(**CLASS_STREAM, federation__rounds=2)
    summary, _ = run_local(job)
    rows = []
    for msg, reply in carried:
        if msg.metadata.message_type == "train":
            head = [v for k, v in msg.content["arrays"].to_torch_state_dict().items() if k.endswith("classifier"
                    ".modules_to_save.default.bias")]
            rows.append((int(msg.content["config"]["server-round"]), head[0].shape[0]))
            assert not reply.has_error()
    assert sorted(set(rows)) == [(1, 2), (2, 4)]
    assert summary["rejected_updates"] == 0
    assert summary["continual"]["classes"] == [2, 4]


def test_after_stage_two_the_model_is_measured_on_stage_one(job_factory):
    job = job_factory(**CLASS_STREAM, federation__rounds=4)
    summary, _ = run_local(job)
    R = summary["continual"]["R"]
    assert len(R) == 2 and len(R[1]) == 2
    evaluator = Evaluator(build_workspace(job))
    after_two = evaluator.state(checkpoint_state(job.run_dir, 4), stage=0)
    assert R[1][0] == pytest.approx(after_two["accuracy"])
    assert R[0][1] == 0.0  # before stage 2 the head has no row for its classes
    lines = [line for line in RunDirectory(job.run_dir).read_metrics() if "stage_test_accuracy" in line]
    assert [line["round"] for line in lines] == [2, 4]
    assert set(summary["continual"]["parties"]) == {"0", "1", "2"}
    assert Path(job.run_dir, "accuracy_matrix.png").stat().st_size > 1000


def _examples(labels: list[int], width: int = 4) -> Examples:
    n = len(labels)
    ids = torch.arange(n * width).reshape(n, width)
    return Examples({"input_ids": ids, "attention_mask": torch.ones(n, width, dtype=torch.long),
                     "labels": torch.tensor(labels)}, torch.full((n,), width))


def test_the_replay_buffer_keeps_a_bounded_uniform_sample_of_finished_stages_only():
    state = RecordDict()
    assert remember(state, [], 10, seed=0) is None
    first = _examples([0] * 200)
    buffer = remember(state, [(0, first)], 10, seed=0)
    assert len(buffer) == 10 and set(buffer.tensors["labels"].tolist()) == {0}
    again = remember(state, [(0, first)], 10, seed=1)  # stage 0 is offered once
    assert torch.equal(again.tensors["input_ids"], buffer.tensors["input_ids"])
    shares = []
    for seed in range(40):
        state = RecordDict()
        remember(state, [(0, first)], 10, seed=seed)
        mixed = remember(state, [(0, first), (1, _examples([1] * 200))], 10, seed=seed)
        assert len(mixed) == 10
        shares.append(mixed.tensors["labels"].float().mean().item())
    assert 0.4 < sum(shares) / len(shares) < 0.6  # each example seen is kept with the same probability


def test_replay_buffers_stay_in_node_state_and_never_travel(job_factory, carried):
    naive = job_factory("naive", **CLASS_STREAM, federation__rounds=2)
    run_local(naive)
    sent_naive = [(sorted(m.content.array_records), sorted(r.content.array_records)) for m, r in carried]
    carried.clear()
    job = job_factory("replay", **CLASS_STREAM, federation__rounds=2, continual__approach="replay",
                      continual__replay_size=5)
    _, grid = run_local(job)
    sent = [(sorted(m.content.array_records), sorted(r.content.array_records)) for m, r in carried]
    assert sent == sent_naive  # the same records, and no other, cross the wire
    for msg, reply in carried:
        for record in (*msg.content.array_records.values(), *reply.content.array_records.values()):
            assert not any("replay" in key for key in record)
    for ctx in grid.contexts.values():
        buffer = ctx.state[BUFFER_KEY].to_torch_state_dict()
        assert buffer["labels"].shape[0] == 5 and set(buffer["labels"].tolist()) <= {0, 1}  # stage 1's classes


def test_ewc_with_penalty_zero_equals_naive_and_a_penalty_changes_training(job_factory):
    common = {**CLASS_STREAM, "federation__rounds": 2}
    run_local(naive := job_factory("naive", **common))
    run_local(zero := job_factory("zero", **common, continual__approach="ewc", continual__ewc_lambda=0.0))
    run_local(strong := job_factory("strong", **common, continual__approach="ewc", continual__ewc_lambda=1e6))
    a, b, c = (checkpoint_state(j.run_dir, 2) for j in (naive, zero, strong))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_joining_party_starts_from_the_current_global_model(job_factory, carried):
    job = job_factory(continual__kind="domain_incremental", continual__stages=2, continual__parties=["0-1", "0-2"],
                      federation__rounds=2)
    run_local(job)
    trained = [(int(m.content["config"]["server-round"]), m.metadata.dst_node_id, m) for m, _ in carried
               if m.metadata.message_type == "train"]
    assert sorted((r, node) for r, node, _ in trained) == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]
    joined = next(m for r, node, m in trained if node == 3).content["arrays"].to_torch_state_dict()
    after_stage_one = checkpoint_state(job.run_dir, 1)
    assert all(torch.equal(joined[k], after_stage_one[k]) for k in after_stage_one)


COLOURS = {"red": "apple cherry ruby blood rose flame brick wine",
           "blue": "ocean sky navy sapphire ice river whale cobalt",
           "green": "grass leaf forest mint frog moss lime jade", "gray": "stone ash cloud steel smoke rat lead fog"}


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    """240 texts of five words from their colour's own vocabulary: a task the tiny model learns in a few steps."""
    rng = random.Random(0)
    path = tmp_path / "colours.jsonl"
    with path.open("w") as handle:
        for i in range(240):
            label = list(COLOURS)[i % 4]
            text = " ".join(rng.choices(COLOURS[label].split(), k=5))
            handle.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


def test_naive_forgets_and_replay_forgets_less_on_conflicting_stages(job_factory, colours):
    common = {"continual__kind": "class_incremental", "continual__stages": 2, "continual__classes": ["red|blue",
              "green|gray"], "data__source": "jsonl", "data__path": str(colours), "data__max_examples": 0,
              "federation__rounds": 4, "train__local_steps": 16, "method__name": "full", "train__lr": 0.003}
    naive, _ = run_local(job_factory("naive", **common))
    replay, _ = run_local(job_factory("replay", **common, continual__approach="replay", continual__replay_size=16))
    R_naive, R_replay = naive["continual"]["R"], replay["continual"]["R"]
    assert R_naive[0][0] > 0.9 and R_naive[1][1] > 0.9, R_naive  # it learns each stage ...
    assert naive["continual"]["backward_transfer"] < -0.8, R_naive  # ... and forgets the first
    assert replay["continual"]["backward_transfer"] > naive["continual"]["backward_transfer"] + 0.5, R_replay


def test_a_domain_incremental_stream_aligns_a_later_source_to_the_first_sources_labels(job_factory):
    job = job_factory(continual__kind="domain_incremental", continual__stages=2,
                      continual__sources=["bbc_news", "ag_news"], continual__label_map=["World=politics",
                                                                                        "Sci/Tech=tech"],
                      data__max_examples=200, federation__rounds=2)
    first, second = split_stream(load_source(job.data), job)
    assert first.label_names == second.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    names = second.label_names
    assert {names[label] for label in second.test["label"]} == {"business", "politics", "sports", "tech"}
    assert len(first.test) + sum(len(c.train) + len(c.val) for c in first.clients) == 100  # half the stream each
