"""The method seam: typed configs per method, and a personal part that trains but never travels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ffm.methods import METHODS
from ffm.registry import Registry
from ffm.runtime import run_local
from ffm.workspace import workspace_for


def test_a_personal_head_never_appears_in_any_message_and_stays_in_each_nodes_state(job_factory, carried):
    job = job_factory(method__personal=["classifier"], train__lr=0.05)

    _, grid = run_local(job)

    names = set()
    for msg, reply in carried:
        for record in (*msg.content.array_records.values(), *reply.content.array_records.values()):
            names.update(record.keys())
    assert names and not any("classifier" in name for name in names)
    assert any("lora_" in name for name in names)  # the shared part still travels
    heads = [ctx.state["personal"].to_torch_state_dict() for ctx in grid.contexts.values()]
    assert all(any("classifier" in k for k in head) for head in heads)
    first = next(iter(heads[0]))
    assert not torch.equal(heads[0][first], heads[1][first])  # each client trained its own head


def test_personal_heads_survive_an_interrupted_simulation_and_its_resume_ends_bit_identical(job_factory, monkeypatch):
    from conftest import checkpoint_state, run_interrupted

    overrides = {"method__personal": ["classifier"], "train__lr": 0.05, "federation__rounds": 3}
    _, straight_grid = run_local(straight := job_factory("straight", **overrides))
    broken = job_factory("broken", **overrides)
    run_interrupted(broken, monkeypatch, at_train_call=4)  # the first client of round 2
    broken.resume = True

    _, resumed_grid = run_local(broken)

    a, b = checkpoint_state(straight.run_dir, 3), checkpoint_state(broken.run_dir, 3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for node, ctx in straight_grid.contexts.items():
        mine, theirs = ctx.state["personal"].to_torch_state_dict(), resumed_grid.contexts[node].state["personal"]
        assert all(torch.equal(mine[k], theirs.to_torch_state_dict()[k]) for k in mine)


def test_without_personal_keys_the_head_travels_with_the_adapters(job_factory):
    workspace = workspace_for(job_factory())

    assert any("classifier" in name for name in workspace.initial_state)
    assert workspace.initial_personal == {}


def test_full_method_trains_and_sends_every_weight(job_factory):
    workspace = workspace_for(job_factory(method__name="full"))

    assert len(workspace.initial_state) == len(list(workspace.model.parameters()))


def test_a_registry_refuses_a_second_entry_under_a_registered_name():
    with pytest.raises(ValueError, match="registered twice"):
        METHODS.register("lora", METHODS["lora"])


def test_a_registry_refuses_a_name_that_is_not_a_plain_identifier():
    with pytest.raises(ValueError, match="not a valid name"):
        Registry("method.name").register("Lo-RA", object())


def test_each_party_is_measured_with_its_personal_part_beside_the_global_model(job_factory):
    job = job_factory(method__personal=["classifier"], train__lr=0.05, train__eval_parties=True)

    summary, grid = run_local(job)

    parties = summary["parties"]
    assert set(parties["party_val_personal_accuracy"]) == set(parties["party_val_accuracy"]) == {"0", "1", "2"}
    ws = workspace_for(job)
    head = grid.contexts[2].state["personal"].to_torch_state_dict()  # node 2 holds partition 1
    final = torch.load(sorted((Path(job.run_dir) / "checkpoints").glob("*.pt"))[-1], weights_only=True)["state"]
    ws.load(final, head)
    own = ws.task.evaluate(ws.model, ws.task.encode(ws.data.clients[1].val, ws.tokenizer, 32), 32)["accuracy"]
    assert parties["party_val_personal_accuracy"]["1"] == pytest.approx(own)
