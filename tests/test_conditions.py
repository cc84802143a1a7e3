"""Unreliable and hostile federations: clients that drop out, rounds below their minimum, stragglers and
attackers, and what the robust rules make of an attack."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_state
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from ffm.client import flip_labels
from ffm.config import load_job
from ffm.errors import RoundFailedError
from ffm.local_training import straggler_steps
from ffm.mods import MODS, is_attacker
from ffm.runtime import run_local, set_message_id, set_task_identity
from ffm.server import build_strategy
from ffm.strategies import UpdateGuard


@pytest.fixture(autouse=True)
def _identity():
    set_task_identity(run_id=1)


def _lines(job) -> list[dict]:
    return [json.loads(x) for x in (Path(job.run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_clients_that_drop_out_are_logged_and_the_round_completes_with_the_others(job_factory):
    job = job_factory(client__mods=["dropout"], client__dropout=0.5, federation__num_clients=6)

    summary, _ = run_local(job)

    dropped = [r for line in _lines(job)[1:] for r in line["rejected"]]
    assert dropped and all("dropped out of round" in r["reason"] for r in dropped)
    assert summary["rounds"] == 2 and summary["failed_rounds"] == []
    assert all(len(line["clients"]) + len(line["rejected"]) == 6 for line in _lines(job)[1:])


def test_a_round_below_the_minimum_fails_and_leaves_the_global_state_unchanged(job_factory):
    job = job_factory(client__mods=["dropout"], client__dropout=0.5, federation__min_train_clients=3,
                      federation__rounds=4, federation__max_failed_rounds=10)

    summary, _ = run_local(job)

    lines = _lines(job)
    failed = [line["round"] for line in lines if line.get("failed")]
    assert failed and failed == summary["failed_rounds"] and summary["rounds"] == 4
    for rnd in failed:
        reason = lines[rnd]["failed"]
        assert "fewer than federation.min_train_clients=3" in reason or "no client returned" in reason
        if rnd > 1:
            before, after = checkpoint_state(job.run_dir, rnd - 1), checkpoint_state(job.run_dir, rnd)
            assert all(torch.equal(before[k], after[k]) for k in before)


def _reply(node: int, state: dict) -> Message:
    instruction = Message(RecordDict({"config": ConfigRecord({})}), node, MessageType.TRAIN)
    set_message_id(instruction, f"m{node}")
    instruction.metadata.__dict__["_src_node_id"] = 0
    reply = Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": 1})}),
                    reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


class _Nodes:
    def get_node_ids(self) -> list[int]:
        return [1, 2]


def test_failed_rounds_in_a_row_stop_the_run_with_an_error_naming_the_setting():
    guard = UpdateGuard(build_strategy(load_job(None, [])), min_updates=2, max_failed_rounds=2)
    guard.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord({}), _Nodes())
    one = [_reply(1, {"w": torch.ones(2)})]

    assert guard.aggregate_train(1, one) == (None, None)  # failed, logged, the run goes on
    assert "fewer than federation.min_train_clients=2" in guard.rounds[1].failed
    with pytest.raises(RoundFailedError, match=re.escape("2 failed round(s) in a row (federation.max_failed_rounds)")):
        guard.aggregate_train(2, one)


def _attacked_replies(attack: str, clients: int = 10) -> tuple[list[Message], torch.Tensor]:
    """Each client trains from 0 to an honest update near 1; the attack mod poisons the attackers' replies."""
    job = load_job(None, ["client.mods=[attack]", f"client.attack={attack}", "client.attackers=0.2",
                          f"federation.num_clients={clients}", "client.attack_scale=10"])
    mod = MODS["attack"].build(job)
    honest = 1.0 + 0.05 * torch.randn(clients, 16, generator=torch.Generator().manual_seed(0))
    replies = []
    for party in range(clients):
        node = party + 1
        msg = Message(RecordDict({"arrays": ArrayRecord({"w": torch.zeros(16)}),
                                  "config": ConfigRecord({"server-round": 1})}), node, MessageType.TRAIN)
        set_message_id(msg, f"m{node}")
        msg.metadata.__dict__["_src_node_id"] = 0
        context = Context(run_id=1, node_id=node, node_config={"partition-id": party}, state=RecordDict(),
                          run_config={})

        def train(m: Message, _ctx: Context, party: int = party) -> Message:
            content = RecordDict({"arrays": ArrayRecord({"w": honest[party].clone()}),
                                  "metrics": MetricRecord({"num-examples": 1})})
            return Message(content, reply_to=m)

        reply = mod(msg, context, train)
        reply.metadata.__dict__["_src_node_id"] = node
        replies.append(reply)
    return replies, honest[[p for p in range(clients) if not is_attacker(job, p)]].mean(0)


@pytest.mark.parametrize("attack", ["sign_flip", "scale", "gaussian"])
def test_with_20_percent_attackers_median_and_krum_stay_near_the_honest_mean_while_fedavg_is_pulled_away(attack):
    replies, honest_mean = _attacked_replies(attack)
    attacked = [r.content["arrays"].to_torch_state_dict()["w"] for r in replies[:2]]
    assert all(float((a - honest_mean).norm()) > 5.0 for a in attacked)  # the attackers' replies are poisoned

    def error(rule: str, *keys: str) -> float:
        strategy = build_strategy(load_job(None, [f"strategy.name={rule}", *keys]))
        arrays, _ = strategy.aggregate_train(1, _attacked_replies(attack)[0])  # fresh: FedMedian pops the arrays
        return float((arrays.to_torch_state_dict()["w"] - honest_mean).norm())

    assert error("fedavg") > 1.0
    assert error("fedmedian") < 0.1
    assert error("krum", "strategy.num_malicious_nodes=2") < 0.2
    assert error("fedtrimmedavg", "strategy.beta=0.2") < 0.1


def test_only_the_configured_share_of_clients_attacks():
    job = load_job(None, ["client.attackers=0.3", "federation.num_clients=10"])

    assert [p for p in range(10) if is_attacker(job, p)] == [0, 1, 2]


def test_a_label_flipping_attacker_trains_on_labels_read_backwards():
    batches = [{"input_ids": torch.zeros(3, 2), "labels": torch.tensor([0, 1, 4])}]

    (flipped,) = flip_labels(batches, num_labels=5)

    assert flipped["labels"].tolist() == [4, 3, 0]


def test_a_label_flip_attack_poisons_only_the_attackers_training(job_factory, monkeypatch):
    import ffm.client

    flips: list[int] = []
    real = ffm.client.flip_labels
    monkeypatch.setattr(ffm.client, "flip_labels", lambda batches, k: (flips.append(k), real(batches, k))[1])

    summary, _ = run_local(job_factory(client__mods=["attack"], client__attack="label_flip", client__attackers=0.34))

    assert summary["rounds"] == 2 and flips == [5, 5]  # one attacker of 3 clients, in each of 2 rounds; 5 topics


def test_straggler_steps_fall_in_the_spread_and_repeat_for_a_seed():
    drawn = [straggler_steps(10, 0.5, seed) for seed in range(200)]

    assert set(drawn) == set(range(5, 11)) and drawn == [straggler_steps(10, 0.5, s) for s in range(200)]
    assert straggler_steps(10, 0.0, 3) == 10
