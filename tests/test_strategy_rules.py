"""Flower's strategies through ffm's strategy seam: their keys reach them, their client rules are applied,
their server state survives a resume, and records travel by key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import checkpoint_state, run_interrupted
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from ffm.config import load_job
from ffm.models import state_nbytes
from ffm.runtime import run_local, set_message_id, set_task_identity
from ffm.server import build_strategy
from ffm.strategies import (
    STRATEGIES,
    RoundOffset,
    StrategyWrapper,
    UpdateGuard,
    load_strategy_state,
    strategy_state,
)
from ffm.strategies.scaffold import CONTROL_UPDATE_KEY


@pytest.fixture(autouse=True)
def _identity():
    set_task_identity(run_id=1)


def _reply(node: int, records: dict, num_examples: int = 1) -> Message:
    instruction = Message(RecordDict({"config": ConfigRecord({})}), node, MessageType.TRAIN)
    set_message_id(instruction, f"m{node}")
    instruction.metadata.__dict__["_src_node_id"] = 0
    content = RecordDict({**records, "metrics": MetricRecord({"num-examples": num_examples, "lr-sum": 1.0})})
    reply = Message(content, reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def _final(job) -> dict[str, torch.Tensor]:
    return checkpoint_state(job.run_dir, job.federation.rounds)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fedprox_with_mu_zero_trains_bit_for_bit_as_fedavg(job_factory):
    fedavg = job_factory("fedavg", strategy__name="fedavg")
    fedprox = job_factory("fedprox", strategy__name="fedprox", strategy__proximal_mu=0.0)

    run_local(fedavg)
    run_local(fedprox)

    assert _equal(_final(fedavg), _final(fedprox))


def _client_distances(carried: list) -> list[float]:
    """L2 distance of each round-1 train reply from the global state it started from."""
    distances = []
    for msg, reply in carried:
        if msg.metadata.message_type == MessageType.TRAIN and msg.content["config"]["server-round"] == 1:
            sent = msg.content["arrays"].to_torch_state_dict()
            got = reply.content["arrays"].to_torch_state_dict()
            distances.append(float(torch.sqrt(sum(((got[k] - sent[k]) ** 2).sum() for k in sent))))
    return distances


def test_fedprox_pulls_client_states_toward_the_global_state(job_factory, carried):
    overrides = {"federation__rounds": 1, "federation__fraction_evaluate": 0.0, "train__local_steps": 6,
                 "train__lr": 0.05}
    run_local(job_factory("mu0", strategy__name="fedprox", strategy__proximal_mu=0.0, **overrides))
    free = _client_distances(carried)
    carried.clear()
    run_local(job_factory("mu", strategy__name="fedprox", strategy__proximal_mu=50.0, **overrides))
    pulled = _client_distances(carried)

    assert len(free) == len(pulled) == 3
    assert all(p < 0.9 * f for p, f in zip(pulled, free, strict=True)), (pulled, free)


def test_fedavgm_without_momentum_and_server_lr_one_equals_fedavg(job_factory):
    fedavg = job_factory("fedavg", strategy__name="fedavg")
    fedavgm = job_factory("fedavgm", strategy__name="fedavgm", strategy__server_momentum=0.0,
                          strategy__server_learning_rate=1.0)

    run_local(fedavg)
    run_local(fedavgm)

    a, b = _final(fedavg), _final(fedavgm)
    for name in a:  # old - 1.0 * (old - new) is `new` up to float rounding
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["fedadam", "fedavgm", "fedyogi", "scaffold"])
def test_a_stateful_strategy_resumed_after_round_1_of_3_ends_bit_identical(job_factory, monkeypatch, name):
    # SCAFFOLD's state is on both sides: the server's control variate and each node's own (in node state)
    overrides = {"strategy__name": name, "federation__rounds": 3}
    straight = job_factory("straight", **overrides)
    run_local(straight)

    broken = job_factory("broken", **overrides)
    run_interrupted(broken, monkeypatch, at_train_call=4)  # the first client of round 2 (3 clients a round)
    assert sorted(p.name for p in (Path(broken.run_dir) / "checkpoints").iterdir()) == ["round-000001.pt"]

    broken.resume = True
    run_local(broken)

    assert _equal(_final(straight), _final(broken))


def test_fedadam_state_round_trips_through_a_checkpoint_exactly():
    strategy = build_strategy(load_job(None, ["strategy.name=fedadam"]))
    strategy.m_t = {"w": torch.randn(3).numpy()}
    strategy.v_t = {"w": torch.rand(3).numpy()}
    strategy.current_arrays = {"w": torch.randn(3).numpy()}
    fresh = build_strategy(load_job(None, ["strategy.name=fedadam"]))

    load_strategy_state(UpdateGuard(fresh), strategy_state(UpdateGuard(strategy)))

    for attr in ("m_t", "v_t", "current_arrays"):
        assert (getattr(fresh, attr)["w"] == getattr(strategy, attr)["w"]).all()


def test_trimmed_mean_cuts_the_lowest_and_highest_values_of_each_coordinate():
    strategy = build_strategy(load_job(None, ["strategy.name=fedtrimmedavg", "strategy.beta=0.2"]))
    values = [[1.0, -50.0], [2.0, 1.0], [3.0, 2.0], [4.0, 3.0], [100.0, 4.0]]
    replies = [_reply(i + 1, {"arrays": ArrayRecord({"w": torch.tensor(v)})}) for i, v in enumerate(values)]

    arrays, _ = strategy.aggregate_train(1, replies)

    # beta 0.2 of 5 cuts one value at each end per coordinate: mean(2, 3, 4) = 3 and mean(1, 2, 3) = 2
    assert torch.equal(arrays.to_torch_state_dict()["w"], torch.tensor([3.0, 2.0]))


class _Recording(StrategyWrapper):
    """Keeps the replies that reach the aggregation rule."""

    def __init__(self, inner, arrayrecord_key: str | None) -> None:
        super().__init__(inner)
        self.arrayrecord_key = arrayrecord_key
        self.received: list[Message] = []

    def aggregate_train(self, server_round, replies):
        self.received = list(replies)
        return None, None


def test_a_reply_with_a_second_record_reaches_the_strategy_with_both_records():
    rule = _Recording(FedAvg(), arrayrecord_key="arrays")
    guard = UpdateGuard(rule)
    guard._expected = {"w": (2,)}
    records = {"arrays": ArrayRecord({"w": torch.ones(2)}), "control": ArrayRecord({"c": torch.zeros(4)})}

    guard.aggregate_train(1, [_reply(1, records)])

    (got,) = rule.received
    assert set(got.content.array_records) == {"arrays", "control"}
    assert guard.rounds[1].bytes_up == state_nbytes(records["arrays"]) + state_nbytes(records["control"])


def test_a_reply_without_tensors_reaches_a_strategy_that_expects_none():
    rule = _Recording(FedAvg(), arrayrecord_key=None)
    guard = UpdateGuard(rule)

    guard.aggregate_train(1, [_reply(1, {"scores": ConfigRecord({"prompt-0": 0.5})})])

    (got,) = rule.received
    assert not got.content.array_records and got.content["scores"]["prompt-0"] == 0.5


def test_a_reply_without_the_arrays_record_is_rejected_when_the_strategy_expects_it():
    guard = UpdateGuard(_Recording(FedAvg(), arrayrecord_key="arrays"))
    guard._expected = {"w": (2,)}
    good = _reply(1, {"arrays": ArrayRecord({"w": torch.ones(2)})})

    guard.aggregate_train(1, [good, _reply(2, {"other": ArrayRecord({"w": torch.ones(2)})})])

    (rejected,) = guard.rounds[1].rejected
    assert rejected["node"] == 2 and "no ArrayRecord 'arrays'" in rejected["reason"]


class _Nodes:
    """The one Grid call a strategy's configure_train makes: which nodes exist."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_attribute_a_strategy_changes_across_rounds_is_saved_in_its_checkpoint_state(name):
    strategy = build_strategy(load_job(None, [f"strategy.name={name}"]))
    before = dict(vars(strategy))
    arrays = ArrayRecord({"w": torch.zeros(2)})
    for server_round in (1, 2):
        strategy.configure_train(server_round, arrays, ConfigRecord({}), _Nodes())
        extra = {CONTROL_UPDATE_KEY: ArrayRecord({"w": torch.ones(2)})} if name == "scaffold" else {}
        replies = [_reply(n, {"arrays": ArrayRecord({"w": torch.full((2,), float(n * server_round))}), **extra})
                   for n in range(1, 6)]
        arrays, _ = strategy.aggregate_train(server_round, replies)

    # Underscored attributes are a round's own: configure_train sets them, that round's aggregate_train reads them.
    changed = {k for k, v in vars(strategy).items() if (k not in before or v is not before[k]) and k[0] != "_"}
    assert changed <= set(strategy_state(strategy)), f"{name} carries {changed} between rounds"


@pytest.mark.parametrize("order", ["guard-inside", "guard-outside"])
def test_wrappers_pass_the_inner_strategys_state_through_in_either_order(order):
    def wrapped(rule):
        if order == "guard-inside":
            return RoundOffset(UpdateGuard(rule), offset=0, seed=0)
        return UpdateGuard(RoundOffset(rule, offset=0, seed=0))

    rule = build_strategy(load_job(None, ["strategy.name=fedavgm"]))
    rule.momentum_vector = [torch.randn(2).numpy()]
    fresh = build_strategy(load_job(None, ["strategy.name=fedavgm"]))

    load_strategy_state(wrapped(fresh), strategy_state(wrapped(rule)))

    assert (fresh.momentum_vector[0] == rule.momentum_vector[0]).all()
    assert wrapped(fresh).server_momentum == 0.9  # attributes of the rule are visible through the wrappers
