"""FedNova (Wang et al. 2020): normalized averaging for clients that ran different amounts of local work.

FedAvg of states lets a client that took more (or larger) steps pull the global model toward its own optimum:
the objective it converges to is inconsistent. FedNova divides each client's update by its amount of work
a_i (here its summed effective learning rate, ``lr-sum``, which each ffm client reports: steps x lr for
constant SGD, momentum and schedules included), averages those normalized updates with the data weights p_i,
and rescales by tau_eff = sum_i p_i a_i:

    x+ = x - tau_eff * sum_i p_i (x - y_i) / a_i

When every client did the same work this is exactly FedAvg (a_i = tau_eff). Server-only: the client rule is
plain local training. Stateless between rounds. Flwr has no FedNova.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from ffm.keys import ARRAYS_KEY, METRICS_KEY
from ffm.strategies.spec import FlowerSpec, StrategyConfig

__all__ = ["FEDNOVA", "FedNova", "FedNovaConfig", "WORK_KEY"]

WORK_KEY = "lr-sum"  # a client's amount of local work, in its train MetricRecord


class FedNova(FedAvg):
    """Flower's FedAvg (sampling, weighting, metrics) with FedNova's normalized aggregate."""

    def __init__(self, **fedavg: Any) -> None:
        super().__init__(**fedavg)
        self._round_start: dict[str, torch.Tensor] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_start = arrays.to_torch_state_dict()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)  # as FedAvg does
        weights, work, states = [], [], []
        for msg in valid:
            reported = msg.content[METRICS_KEY]
            if WORK_KEY not in reported:
                raise ValueError(f"FedNova needs '{WORK_KEY}' in every train reply's metrics (ffm clients send it)")
            weights.append(float(reported[self.weighted_by_key]))
            work.append(float(reported[WORK_KEY]))
            states.append(msg.content[ARRAYS_KEY].to_torch_state_dict())
        total = sum(weights)
        p = [w / total for w in weights]
        tau_eff = sum(pi * ai for pi, ai in zip(p, work, strict=True))
        new = {}
        for name, x in self._round_start.items():
            if not x.is_floating_point():
                new[name] = states[0][name]
                continue
            step = sum(pi * (x.double() - y[name].double()) / ai for pi, ai, y in zip(p, work, states, strict=True))
            new[name] = (x.double() - tau_eff * step).to(x.dtype)
        return ArrayRecord(new), metrics


@dataclass
class FedNovaConfig(StrategyConfig):
    """FedNova has no keys of its own (clients report their work)."""

    name: str = "fednova"


class FedNovaSpec(FlowerSpec):
    """FedNova's server rule; clients train as usual and report their work (``lr-sum``)."""

    assumes_sgd = True


FEDNOVA = FedNovaSpec(FedNova, FedNovaConfig)
