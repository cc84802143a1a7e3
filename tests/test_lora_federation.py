"""LoRA federated exactly and with heterogeneous ranks: the global model is what the clients' models average to."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import checkpoint_state
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from ffm.config import ConfigError, load_job
from ffm.keys import BASE_DELTA_PREFIX
from ffm.methods.lora_aggregation import LoraAggregation
from ffm.methods.lora_federation import RANK_KEY, lora_pairs
from ffm.runtime import run_local, set_message_id, set_task_identity
from ffm.workspace import build_workspace


@pytest.fixture(autouse=True)
def _identity():
    set_task_identity(run_id=1)


def _reply(node: int, state: dict, examples: int, rank: int | None = None) -> Message:
    instruction = Message(RecordDict({"config": ConfigRecord({})}), node, MessageType.TRAIN)
    set_message_id(instruction, f"m{node}")
    instruction.metadata.__dict__["_src_node_id"] = 0
    metrics = {"num-examples": examples, **({RANK_KEY: rank} if rank is not None else {})}
    reply = Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)}), reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


A, B = "m.lora_A.default.weight", "m.lora_B.default.weight"


class _Nodes:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


def _clients(n: int = 3, r: int = 4, d: int = 6, k: int = 5) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{A: torch.randn(r, k, generator=g), B: torch.randn(d, r, generator=g)} for _ in range(n)]


def _fedavg() -> FedAvg:
    return FedAvg(min_train_nodes=1, min_available_nodes=1, min_evaluate_nodes=0)


def test_exact_aggregation_keeps_the_product_equal_to_the_mean_of_the_clients_products_and_naive_does_not():
    states, examples, scaling = _clients(), [10, 30, 60], 2.0
    wrapper = LoraAggregation(_fedavg(), exact=True, heterogeneous=False, scaling=scaling)
    wrapper.configure_train(1, ArrayRecord({A: torch.zeros(4, 5), B: torch.zeros(6, 4)}), ConfigRecord({}), _Nodes())

    arrays, _ = wrapper.aggregate_train(1, [_reply(n, s, e) for n, s, e in zip((1, 2, 3), states, examples,
                                                                                 strict=True)])

    out = arrays.to_torch_state_dict()
    p = [e / sum(examples) for e in examples]
    target = scaling * sum(pi * (s[B].double() @ s[A].double()) for pi, s in zip(p, states, strict=True))
    naive = scaling * (out[B].double() @ out[A].double())
    delta = out[f"{BASE_DELTA_PREFIX}m.base_layer.weight"].double()
    torch.testing.assert_close(naive + delta, target, rtol=0, atol=1e-5)
    assert float((naive - target).abs().max()) > 0.1  # the naive product alone is off


def test_heterogeneous_ranks_average_each_component_over_the_clients_that_have_it():
    states = _clients()
    ranks = [2, 4, 4]
    for s, r in zip(states, ranks, strict=True):  # what a rank-r client sends: zero beyond r
        s[A][r:] = 0
        s[B][:, r:] = 0
    wrapper = LoraAggregation(_fedavg(), exact=False, heterogeneous=True, scaling=1.0)

    arrays, _ = wrapper.aggregate_train(1, [_reply(n, s, 10, r) for n, s, r in zip((1, 2, 3), states, ranks,
                                                                                     strict=True)])

    out = arrays.to_torch_state_dict()
    torch.testing.assert_close(out[A][:2], (states[0][A][:2] + states[1][A][:2] + states[2][A][:2]) / 3)
    torch.testing.assert_close(out[A][2:], (states[1][A][2:] + states[2][A][2:]) / 2)  # not diluted by zeros
    torch.testing.assert_close(out[B][:, 2:], (states[1][B][:, 2:] + states[2][B][:, 2:]) / 2)


def _final(job) -> dict[str, torch.Tensor]:
    return checkpoint_state(job.run_dir, job.federation.rounds)


def test_heterogeneous_ranks_that_are_all_equal_federate_as_plain_fedavg(job_factory):
    plain, tiers = job_factory("plain", method__r=4), job_factory("tiers", method__r=4, method__client_ranks=[4])
    run_local(plain)
    run_local(tiers)

    a, b = _final(plain), _final(tiers)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_each_party_receives_trains_and_sends_only_its_own_rank(job_factory, carried, monkeypatch):
    sent_up: list[tuple[int, dict]] = []
    expand = LoraAggregation.expand_reply

    def record(self, content):  # what travelled, before the server pads it back to the global rank
        sent_up.append((int(content["metrics"][RANK_KEY]), content["arrays"].to_torch_state_dict()))
        expand(self, content)

    monkeypatch.setattr(LoraAggregation, "expand_reply", record)
    job = job_factory(method__r=4, method__client_ranks=[2, 4])
    run_local(job)

    down = [m for m, _ in carried if m.metadata.message_type == MessageType.TRAIN]
    ranks = {2, 4}
    assert {lora_pairs(m.content["arrays"]).__len__() > 0 for m in down} == {True}
    assert {m.content["arrays"][next(iter(lora_pairs(m.content["arrays"]).values()))[0]].shape[0]
            for m in down} == ranks  # each node got A[:r_i] only
    assert len(sent_up) == len(down) and {rank for rank, _ in sent_up} == ranks
    for rank, state in sent_up:
        for a, b in lora_pairs(state).values():
            assert state[a].shape[0] == rank and state[b].shape[1] == rank and state[a].any()


def test_flexlora_gives_every_rank_the_truncated_svd_of_the_mean_product():
    states, ranks, examples = _clients(), [2, 4, 4], [10, 30, 60]
    for s, r in zip(states, ranks, strict=True):
        s[A][r:] = 0
        s[B][:, r:] = 0
    wrapper = LoraAggregation(_fedavg(), exact=False, heterogeneous=True, scaling=1.0, rank_rule="flexlora")

    arrays, _ = wrapper.aggregate_train(1, [_reply(n, s, e, r) for n, s, e, r in zip((1, 2, 3), states, examples,
                                                                                       ranks, strict=True)])

    out = arrays.to_torch_state_dict()
    p = [e / sum(examples) for e in examples]
    mean = sum(pi * (s[B].double() @ s[A].double()) for pi, s in zip(p, states, strict=True))
    u, sv, vh = torch.linalg.svd(mean)
    for r in (2, 4):  # a rank-r client keeps the first r components: the best rank-r approximation
        best = (u[:, :r] * sv[:r]) @ vh[:r]
        torch.testing.assert_close(out[B][:, :r].double() @ out[A][:r].double(), best, rtol=0, atol=1e-5)


def test_stacking_makes_the_global_model_exactly_the_mean_of_the_clients_models():
    states, ranks, examples, scaling = _clients(), [2, 4, 4], [10, 30, 60], 2.0
    for s, r in zip(states, ranks, strict=True):
        s[A][r:] = 0
        s[B][:, r:] = 0
    start = {A: torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), B: torch.zeros(6, 4)}
    wrapper = LoraAggregation(_fedavg(), exact=False, heterogeneous=True, scaling=scaling, rank_rule="stack")
    wrapper.configure_train(1, ArrayRecord(start), ConfigRecord({}), _Nodes())

    arrays, _ = wrapper.aggregate_train(1, [_reply(n, s, e, r) for n, s, e, r in zip((1, 2, 3), states, examples,
                                                                                       ranks, strict=True)])

    out = arrays.to_torch_state_dict()
    p = [e / sum(examples) for e in examples]
    target = scaling * sum(pi * (s[B].double() @ s[A].double()) for pi, s in zip(p, states, strict=True))
    assert torch.equal(out[A], start[A]) and not out[B].any()  # the adapters restart from where the round began
    torch.testing.assert_close(out[f"{BASE_DELTA_PREFIX}m.base_layer.weight"].double(), target, rtol=0, atol=1e-5)


@pytest.mark.parametrize("rule", ["flexlora", "stack"])
def test_a_mixed_rank_run_federates_with_each_rank_rule(job_factory, rule):
    job = job_factory(rule, method__r=4, method__client_ranks=[2, 4], method__rank_aggregation=rule)

    summary, _ = run_local(job)

    assert summary["rounds"] == 2 and summary["rejected_updates"] == 0
    deltas = [k for k in _final(job) if k.startswith(BASE_DELTA_PREFIX)]
    assert bool(deltas) == (rule == "stack")


def test_an_exact_run_makes_the_global_model_the_mean_of_the_clients_models(job_factory, carried):
    job = job_factory(method__aggregation="exact", federation__rounds=1, train__lr=0.05)

    summary, _ = run_local(job)

    replies = [r for m, r in carried if m.metadata.message_type == MessageType.TRAIN]
    examples = [r.content["metrics"]["num-examples"] for r in replies]
    states = [r.content["arrays"].to_torch_state_dict() for r in replies]
    final = _final(job)
    scaling = job.method.alpha / job.method.r
    pairs = lora_pairs(final)
    assert pairs
    for module, (a, b) in pairs.items():
        mean = sum(e * (s[b].double() @ s[a].double()) for e, s in zip(examples, states, strict=True)) / sum(examples)
        effective = final[f"{BASE_DELTA_PREFIX}{module}.base_layer.weight"].double() + scaling * (
            final[b].double() @ final[a].double())
        torch.testing.assert_close(effective, scaling * mean, rtol=0, atol=1e-5)
    assert summary["trainable_params"] == sum(v.numel() for k, v in final.items() if BASE_DELTA_PREFIX not in k)
    assert (Path(summary["run_dir"]) / "final" / "base_deltas.pt").is_file()


def test_the_base_deltas_travel_down_and_never_come_back(job_factory, carried):
    summary, _ = run_local(job_factory(method__aggregation="exact"))

    train = [(m, r) for m, r in carried if m.metadata.message_type == MessageType.TRAIN]
    down = [any(k.startswith(BASE_DELTA_PREFIX) for k in m.content["arrays"]) for m, _ in train]
    assert down == [False] * 3 + [True] * 3  # round 1 starts from the pristine base; round 2 carries the deltas
    assert not any(k.startswith(BASE_DELTA_PREFIX) for _, r in train for k in r.content["arrays"])
    assert summary["rejected_updates"] == 0


def test_exact_aggregation_with_a_rule_that_is_not_a_mean_is_a_config_error():
    with pytest.raises(ConfigError, match=r"use strategy.name=fedavg or fedprox, not .fedmedian."):
        load_job(None, ["method.aggregation=exact", "strategy.name=fedmedian"])


def _frozen_a(job) -> tuple[dict[str, torch.Tensor], set[str]]:
    """A freshly built model's A matrices, and the names of its trainable parameters."""
    params = dict(build_workspace(job).model.named_parameters())
    return ({n: p.detach().clone() for n, p in params.items() if ".lora_A." in n},
            {n for n, p in params.items() if p.requires_grad})


def test_freeze_a_trains_and_sends_only_b_and_the_head(job_factory, carried):
    job = job_factory(method__freeze_a=True, federation__rounds=2, train__lr=0.05)
    initial = build_workspace(job).initial_state

    summary, _ = run_local(job)

    train = [(m, r) for m, r in carried if m.metadata.message_type == MessageType.TRAIN]
    assert train
    for message, reply in train:  # A travels neither way
        for content in (message.content, reply.content):
            names = list(content["arrays"].keys())
            assert names and not any(".lora_A." in n for n in names)
            assert any(".lora_B." in n for n in names) and any("lora_" not in n for n in names)  # B, the head
    final = _final(job)
    assert set(final) == set(initial)
    assert summary["trainable_params"] == sum(v.numel() for v in final.values())
    assert any(not torch.equal(final[n], initial[n]) for n in final if ".lora_B." in n)  # B learned


def test_every_party_builds_the_same_frozen_a_whatever_its_random_state(job_factory):
    job = job_factory(method__freeze_a=True)
    first, trainable = _frozen_a(job)
    torch.rand(1000)  # a party whose process drew other numbers first (a SuperNode that loaded its data)
    second, _ = _frozen_a(job)

    assert first and first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)
        assert first[name].abs().sum() > 0  # a random init, not zeros: B A can learn through it
    assert not any(".lora_A." in n for n in trainable) and any(".lora_B." in n for n in trainable)


@pytest.mark.parametrize("keys, message", [
    (["method.client_ranks=[2,4]"], "method.client_ranks cannot trim"),
    (["method.aggregation=exact"], "set method.aggregation=naive"),
])
def test_freeze_a_with_a_rule_that_needs_a_is_a_config_error(keys, message):
    with pytest.raises(ConfigError, match=message):
        load_job(None, ["method.freeze_a=true", *keys])


@pytest.mark.parametrize("privacy", [{"privacy__dp_sgd": True, "privacy__sgd_noise_multiplier": 1.0},
                                     {"privacy__secure_aggregation": True}], ids=["dp_sgd", "secure_aggregation"])
def test_freeze_a_federates_under_dp_sgd_and_secure_aggregation(job_factory, privacy):
    job = job_factory(method__freeze_a=True, **privacy)
    initial = build_workspace(job).initial_state

    summary, _ = run_local(job)

    final = _final(job)
    assert summary["rejected_updates"] == 0 and set(final) == set(initial)
    assert not any(".lora_A." in n for n in final)
    assert any(not torch.equal(final[n], initial[n]) for n in final if ".lora_B." in n)
