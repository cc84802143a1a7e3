"""SCAFFOLD (Karimireddy et al. 2020): control variates that cancel client drift on non-IID data.

Server: a control variate c (one tensor per travelling parameter, zeros at the start) travels to the sampled
clients as a second record, ``scaffold-c``, beside the global state. Client i keeps its own c_i in its node
``Context.state`` (never sent), corrects every gradient by (c - c_i) during its local steps, then sets
(the paper's option II)  c_i+ = c_i - c + (x - y_i) / (sum of its effective learning rates)  and replies with
its trained state y_i and ``scaffold-dc`` = c_i+ - c_i. Server: x = x + global_lr * (FedAvg(y_i) - x) and
c = c + |S| / N * mean(dc_i), N the nodes of the federation. Both records count in the round's bytes (twice
FedAvg's). c is server state: it is checkpointed, and a resume continues bit-identically.

Option II assumes plain SGD steps (``train.optimizer=sgd``); with AdamW the correction still runs, but (x - y)
no longer measures the mean gradient, so the config warns. Flwr has no SCAFFOLD: this is its Message-API form.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, validate_message_reply_consistency
from torch import nn

from ffm.settings import option, require
from ffm.strategies.spec import ClientRule, FlowerSpec, StrategyConfig

__all__ = ["CLIENT_CONTROL_KEY", "CONTROL_KEY", "CONTROL_UPDATE_KEY", "SCAFFOLD", "Scaffold", "ScaffoldConfig"]

CONTROL_KEY = "scaffold-c"  # server -> client: the global control variate
CONTROL_UPDATE_KEY = "scaffold-dc"  # client -> server: the change of the client's control variate
CLIENT_CONTROL_KEY = "scaffold-ci"  # the client's own control variate, in its node state

logger = logging.getLogger("ffm")


@dataclass
class ScaffoldConfig(StrategyConfig):
    """SCAFFOLD's server learning rate."""

    name: str = "scaffold"
    global_lr: float = option(1.0, "server learning rate: x += global_lr * (mean of the clients' states - x)")

    def __post_init__(self) -> None:
        require(self.global_lr > 0.0, f"strategy.global_lr must be > 0, got {self.global_lr}")


def _zeros_like(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v, dtype=torch.float32) for k, v in state.items() if v.is_floating_point()}


class Scaffold(FedAvg):
    """Flower's FedAvg (sampling, weighting, metrics) plus the server control variate."""

    def __init__(self, *, global_lr: float = 1.0, **fedavg: Any) -> None:
        super().__init__(**fedavg)
        self.global_lr = global_lr
        self.control: dict[str, torch.Tensor] | None = None
        self._round_start: dict[str, torch.Tensor] = {}
        self._num_nodes = 1

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_start = arrays.to_torch_state_dict()
        if self.control is None:
            self.control = _zeros_like(self._round_start)
        self._num_nodes = max(1, len(list(grid.get_node_ids())))
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for msg in messages:  # FedAvg's messages share one RecordDict; setting it per message is harmless
            msg.content[CONTROL_KEY] = ArrayRecord(self.control)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        contents, updates = [], []
        for msg in valid:
            if CONTROL_UPDATE_KEY not in msg.content.array_records:
                logger.warning("round %d: SCAFFOLD reply from node %s has no '%s'; left out", server_round,
                               msg.metadata.src_node_id, CONTROL_UPDATE_KEY)
                continue
            updates.append(msg.content[CONTROL_UPDATE_KEY].to_torch_state_dict())
            # FedAvg's rules read one ArrayRecord per reply: aggregate a view without the control record
            # (the reply itself is left as it came).
            contents.append(RecordDict({k: v for k, v in msg.content.items() if k != CONTROL_UPDATE_KEY}))
        if not contents:
            return None, None
        validate_message_reply_consistency(contents, self.weighted_by_key, check_arrayrecord=True)
        arrays = aggregate_arrayrecords(contents, self.weighted_by_key)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        assert self.control is not None
        share = len(updates) / self._num_nodes
        for name in self.control:
            mean_dc = torch.stack([u[name].float() for u in updates]).mean(0)
            self.control[name] = self.control[name] + share * mean_dc
        if self.global_lr != 1.0:
            mean = arrays.to_torch_state_dict()
            arrays = ArrayRecord({k: x + self.global_lr * (mean[k] - x) if x.is_floating_point() else mean[k]
                                  for k, x in self._round_start.items()})
        return arrays, metrics

    def state_dict(self) -> dict[str, Any]:
        """The server control variate, for the checkpoint."""
        return {"control": None if self.control is None else {k: v.clone() for k, v in self.control.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.control = state.get("control")


class ScaffoldClient(ClientRule):
    """Client i: gradients corrected by (c - c_i); afterwards c_i is updated in node state and its change sent."""

    def __init__(self, content: RecordDict, model: nn.Module, global_state: dict[str, torch.Tensor],
                 node_state: RecordDict) -> None:
        super().__init__()
        self.node_state, self.global_state = node_state, global_state
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad and n in global_state}
        self.control = content[CONTROL_KEY].to_torch_state_dict() if CONTROL_KEY in content.array_records else (
            _zeros_like(global_state))
        own = node_state[CLIENT_CONTROL_KEY].to_torch_state_dict() if CLIENT_CONTROL_KEY in node_state.array_records \
            else _zeros_like(global_state)
        self.own = own
        self.correction = {n: (self.control[n] - own[n]).to(p.dtype) for n, p in self.params.items()}
        self.grad_hooks = [self._correct]

    def _correct(self, model: nn.Module) -> None:
        for name, p in self.params.items():
            if p.grad is not None:
                p.grad.add_(self.correction[name])

    def finish(self, model: nn.Module, lr_sum: float) -> dict[str, ArrayRecord]:
        new_own, change = {}, {}
        for name, p in self.params.items():
            drift = (self.global_state[name].float() - p.detach().float()) / lr_sum
            new_own[name] = self.own[name] - self.control[name] + drift
            change[name] = new_own[name] - self.own[name]
        self.node_state[CLIENT_CONTROL_KEY] = ArrayRecord(new_own)
        return {CONTROL_UPDATE_KEY: ArrayRecord(change)}


class ScaffoldSpec(FlowerSpec):
    """SCAFFOLD's server rule and its client half (the control-variate correction)."""

    assumes_sgd = True
    client_correction = True

    def client_rule(self, content: RecordDict, model: nn.Module, global_state: dict[str, torch.Tensor],
                    node_state: RecordDict) -> ClientRule:
        return ScaffoldClient(content, model, global_state, node_state)


SCAFFOLD = ScaffoldSpec(Scaffold, ScaffoldConfig, model_shaped_state=True)
