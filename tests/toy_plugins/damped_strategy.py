"""A toy strategy: FedAvg whose server takes only a share of the step toward the clients' mean.

    x+ = x + toy_damping * (mean_i(y_i) - x)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from ffm.settings import option, require
from ffm.strategies import FlowerSpec, StrategyConfig


@dataclass
class DampedConfig(StrategyConfig):
    name: str = "toy_damped"
    toy_damping: float = option(0.5, "share of the step toward the clients' mean")

    def __post_init__(self) -> None:
        require(0.0 < self.toy_damping <= 1.0, "strategy.toy_damping must be in (0, 1]")


class Damped(FedAvg):
    def __init__(self, *, toy_damping: float, **fedavg: Any) -> None:
        super().__init__(**fedavg)
        self.damping = toy_damping
        self.start: dict = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self.start = arrays.to_torch_state_dict()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        mean = arrays.to_torch_state_dict()
        return ArrayRecord({k: x + self.damping * (mean[k] - x) for k, x in self.start.items()}), metrics


DAMPED = FlowerSpec(Damped, DampedConfig, mean_based=True)
