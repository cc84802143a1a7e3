"""Aggregation and update checks, against hand-computed values on small tensors."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from ffm.config import load_job
from ffm.errors import RoundFailedError
from ffm.runtime import set_task_identity
from ffm.server import build_strategy
from ffm.strategies import STRATEGIES, UpdateGuard


@pytest.fixture(autouse=True)
def _identity():
    set_task_identity(run_id=1)


def _reply(node: int, state: dict[str, torch.Tensor], num_examples: int) -> Message:
    instruction = Message(RecordDict({"config": ConfigRecord({})}), node, MessageType.TRAIN)
    instruction.metadata.__dict__["_message_id"] = f"m{node}"
    instruction.metadata.__dict__["_src_node_id"] = 0
    content = RecordDict(
        {"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 1.0})}
    )
    reply = Message(content, reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def _guarded_fedavg() -> UpdateGuard:
    guard = UpdateGuard(build_strategy(load_job(None, ["federation.fraction_evaluate=0"])))
    guard._expected = {"w": (2,), "b": (1,)}  # what configure_train records from the global arrays
    return guard


def test_fedavg_aggregate_is_the_example_weighted_mean_of_the_replies():
    replies = [
        _reply(1, {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}, num_examples=1),
        _reply(2, {"w": torch.tensor([5.0, 6.0]), "b": torch.tensor([4.0])}, num_examples=3),
    ]

    arrays, _ = _guarded_fedavg().aggregate_train(1, replies)

    state = arrays.to_torch_state_dict()
    # (1*[1, 2] + 3*[5, 6]) / 4 = [4, 5];  (1*0 + 3*4) / 4 = 3
    assert torch.allclose(state["w"], torch.tensor([4.0, 5.0]))
    assert torch.allclose(state["b"], torch.tensor([3.0]))


@pytest.mark.parametrize(
    "bad_state, reason",
    [
        ({"w": torch.tensor([float("nan"), 0.0]), "b": torch.tensor([0.0])}, "NaN"),
        ({"w": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([0.0])}, "shape"),
        ({"w": torch.tensor([1.0, 2.0])}, "keys differ"),
    ],
)
def test_a_bad_update_is_rejected_and_logged_and_the_round_goes_on(bad_state, reason):
    guard = _guarded_fedavg()
    good = _reply(1, {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}, num_examples=5)

    arrays, _ = guard.aggregate_train(1, [good, _reply(2, bad_state, num_examples=100)])

    assert torch.equal(arrays.to_torch_state_dict()["w"], torch.tensor([1.0, 2.0]))
    (rejected,) = guard.rounds[1].rejected
    assert rejected["node"] == 2 and reason in rejected["reason"]
    assert [c["node"] for c in guard.rounds[1].clients] == [1]


def test_a_round_without_any_usable_update_stops_with_a_clear_error():
    guard = _guarded_fedavg()
    bad = _reply(1, {"w": torch.tensor([float("inf"), 0.0]), "b": torch.tensor([0.0])}, num_examples=1)

    with pytest.raises(RoundFailedError, match="round 3: no client returned a usable update"):
        guard.aggregate_train(3, [bad])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_runs_a_federated_job(job_factory, name):
    from ffm.runtime import run_local

    summary, _ = run_local(job_factory(strategy__name=name, federation__rounds=1))

    assert summary["rounds"] == 1 and summary["rejected_updates"] == 0


class _Nodes:
    def get_node_ids(self) -> list[int]:
        return [1, 2]


def test_the_aggregate_keeps_the_global_states_dtypes_even_when_the_rule_computes_in_float64():
    guard = UpdateGuard(build_strategy(load_job(None, ["strategy.name=fedadam"])))  # FedOpt returns float64
    guard.configure_train(1, ArrayRecord({"w": torch.zeros(2), "b": torch.zeros(1)}), ConfigRecord({}), _Nodes())

    arrays, _ = guard.aggregate_train(1, [_reply(1, {"w": torch.ones(2), "b": torch.ones(1)}, num_examples=1)])

    assert {name: array.dtype for name, array in arrays.items()} == {"w": "float32", "b": "float32"}


def test_a_node_is_silent_only_when_its_message_got_no_reply_at_all():
    from flwr.app import Error

    ok = [_reply(n, {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}, num_examples=1) for n in (1, 2)]
    lost = Message(Error(code=0, reason="node lost"), reply_to=Message(RecordDict({}), 3, MessageType.TRAIN))
    lost.metadata.__dict__["_src_node_id"] = 0  # the SuperLink answers for a node it lost: not that node's id

    answered = _guarded_fedavg()
    answered._asked = {1, 2, 3}
    answered.aggregate_train(1, [*ok, lost])
    short = _guarded_fedavg()
    short._asked = {1, 2, 3}
    short.aggregate_train(1, ok)

    assert answered.silent == set() and len(answered.rounds[1].rejected) == 1  # the error reply, once
    assert short.silent == {3} and [r["reason"] for r in short.rounds[1].rejected] == [
        "no reply within federation.round_timeout"]
