"""SCAFFOLD and FedNova, the strategies for drifting and uneven clients: their server and client halves, as the
ServerApp and ClientApp call them, on problems whose answer is known."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from torch import nn

from ffm.config import load_job
from ffm.local_training import make_optimizer, train_steps
from ffm.runtime import run_local, set_message_id, set_task_identity
from ffm.server import build_strategy
from ffm.strategies import STRATEGIES
from ffm.strategies.scaffold import CLIENT_CONTROL_KEY, CONTROL_KEY, CONTROL_UPDATE_KEY


@pytest.fixture(autouse=True)
def _identity():
    set_task_identity(run_id=1)


class _Nodes:
    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.n + 1))


def _reply_to(msg: Message, node: int, records: dict) -> Message:
    set_message_id(msg, f"m{node}")
    msg.metadata.__dict__["_src_node_id"] = 0
    reply = Message(RecordDict(records), reply_to=msg)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


class _Point(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))


# Client i's loss: 0.5 * sum_k a_ik (w_k - b_ik)^2. Curvatures and optima differ across clients, so many local
# SGD steps drift each client to its own optimum and FedAvg settles away from the global one.
_A = torch.tensor([[4.0, 0.2], [0.2, 4.0], [1.0, 1.0], [3.0, 0.5]])
_B = torch.tensor([[2.0, -1.0], [-2.0, 1.0], [1.0, 3.0], [-1.0, -3.0]])


def _global_loss(w: torch.Tensor) -> float:
    return float((0.5 * _A * (w - _B) ** 2).sum(1).mean())


def _federate(name: str, rounds: int = 15, steps: int = 20, lr: float = 0.2) -> float:
    """``rounds`` of the strategy's server half over 4 clients running its client half with plain SGD."""
    strategy = build_strategy(load_job(None, [f"strategy.name={name}", "train.optimizer=sgd"]))
    spec = STRATEGIES[name]
    model, node_states = _Point(2), [RecordDict() for _ in range(4)]
    arrays = ArrayRecord({"w": torch.zeros(2)})
    for server_round in range(1, rounds + 1):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord({}), _Nodes(4)))
        replies = []
        for node, msg in enumerate(messages, start=1):
            i = node - 1
            global_state = msg.content["arrays"].to_torch_state_dict()
            model.w.data.copy_(global_state["w"])
            rule = spec.client_rule(msg.content, model, global_state, node_states[i])
            optimizer = make_optimizer(model, lr, 0.0, "sgd")
            train_steps(model, [{"x": torch.zeros(1)}] * steps,
                        objective=lambda m, _b, i=i: (0.5 * _A[i] * (m.w - _B[i]) ** 2).sum(),
                        optimizer=optimizer, penalties=rule.penalties, grad_hooks=rule.grad_hooks)
            extra = rule.finish(model, lr * steps)
            replies.append(_reply_to(Message(msg.content, node, MessageType.TRAIN), node, {
                "arrays": ArrayRecord({"w": model.w.detach().clone()}),
                "metrics": MetricRecord({"num-examples": 10, "lr-sum": lr * steps}), **extra}))
        arrays, _ = strategy.aggregate_train(server_round, replies)
    return _global_loss(arrays.to_torch_state_dict()["w"])


def test_scaffold_reaches_a_lower_global_loss_than_fedavg_under_strong_client_drift():
    optimum = (_A * _B).sum(0) / _A.sum(0)  # the global loss's minimizer, coordinate by coordinate

    fedavg, scaffold = _federate("fedavg"), _federate("scaffold")

    best = _global_loss(optimum)
    assert scaffold < fedavg
    assert scaffold - best < 0.1 * (fedavg - best), (best, scaffold, fedavg)  # SCAFFOLD removes the drift


def test_a_scaffold_client_keeps_its_control_variate_in_node_state_and_sends_only_its_change():
    strategy = build_strategy(load_job(None, ["strategy.name=scaffold"]))
    (msg, *_) = strategy.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord({}), _Nodes(2))
    assert torch.equal(msg.content[CONTROL_KEY].to_torch_state_dict()["w"], torch.zeros(2))  # c starts at 0
    model, node_state = _Point(2), RecordDict()
    rule = STRATEGIES["scaffold"].client_rule(msg.content, model, {"w": torch.zeros(2)}, node_state)
    model.w.data.copy_(torch.tensor([-1.0, 2.0]))  # as if trained with a learning-rate sum of 0.5

    sent = rule.finish(model, 0.5)

    own = node_state[CLIENT_CONTROL_KEY].to_torch_state_dict()["w"]
    assert torch.equal(own, torch.tensor([2.0, -4.0]))  # c_i+ = c_i - c + (x - y) / 0.5
    assert torch.equal(sent[CONTROL_UPDATE_KEY].to_torch_state_dict()["w"], own)  # its change from c_i = 0


def test_scaffold_moves_the_server_control_variate_by_the_sampled_share_of_the_mean_change():
    strategy = build_strategy(load_job(None, ["strategy.name=scaffold"]))
    messages = list(strategy.configure_train(1, ArrayRecord({"w": torch.zeros(1)}), ConfigRecord({}), _Nodes(4)))
    replies = [_reply_to(Message(m.content, n, MessageType.TRAIN), n, {
        "arrays": ArrayRecord({"w": torch.ones(1)}), "metrics": MetricRecord({"num-examples": 1, "lr-sum": 1.0}),
        CONTROL_UPDATE_KEY: ArrayRecord({"w": torch.tensor([float(n)])})})
        for n, m in zip((1, 2), messages[:2], strict=True)]  # 2 of the 4 nodes reply

    strategy.aggregate_train(1, replies)

    assert torch.equal(strategy.state_dict()["control"]["w"], torch.tensor([2 / 4 * 1.5]))  # |S|/N * mean(dc)


def _nova(work: list[float], examples: list[int], states: list[float], start: float = 0.0) -> float:
    strategy = build_strategy(load_job(None, ["strategy.name=fednova"]))
    messages = list(strategy.configure_train(1, ArrayRecord({"w": torch.tensor([start])}), ConfigRecord({}),
                                             _Nodes(len(work))))
    replies = [_reply_to(Message(m.content, n, MessageType.TRAIN), n, {
        "arrays": ArrayRecord({"w": torch.tensor([y])}), "metrics": MetricRecord({"num-examples": e, "lr-sum": a})})
        for n, (m, a, e, y) in enumerate(zip(messages, work, examples, states, strict=True), start=1)]
    arrays, _ = strategy.aggregate_train(1, replies)
    return float(arrays.to_torch_state_dict()["w"])


def test_fednova_equals_fedavg_when_every_client_did_the_same_work():
    fedavg = (3 * 1.0 + 1 * -2.0) / 4  # example-weighted mean of the states

    assert _nova([0.5, 0.5], [3, 1], [1.0, -2.0]) == pytest.approx(fedavg, abs=1e-6)


def test_fednova_normalizes_each_update_by_the_work_that_made_it():
    # x = 0; client 1 did twice the work and moved to -4, client 2 moved to -1; equal weights.
    # FedAvg: -2.5. FedNova: tau_eff = 1.5, normalized steps 2 and 1 -> x+ = -1.5 * 1.5 = -2.25.
    assert _nova([2.0, 1.0], [1, 1], [-4.0, -1.0]) == pytest.approx(-2.25, abs=1e-6)


@pytest.mark.parametrize("name", ["scaffold", "fednova"])
def test_a_drift_strategy_federates_a_real_job_with_stragglers(job_factory, carried, name):
    summary, _ = run_local(job_factory(strategy__name=name, train__optimizer="sgd", train__lr=0.05,
                                       train__local_steps=4, train__steps_spread=0.75, federation__rounds=2))

    steps = [r.content["metrics"]["local-steps"] for m, r in carried if m.metadata.message_type == MessageType.TRAIN]
    assert summary["rounds"] == 2 and summary["rejected_updates"] == 0
    assert set(steps) <= {1, 2, 3, 4} and len(set(steps)) > 1  # stragglers did uneven work
    if name == "scaffold":  # the control variate travelled both ways and counted in the bytes
        train = [(m, r) for m, r in carried if m.metadata.message_type == MessageType.TRAIN]
        assert all(CONTROL_KEY in m.content.array_records for m, _ in train)
        assert all(CONTROL_UPDATE_KEY in r.content.array_records for _, r in train)
