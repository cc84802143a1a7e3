"""Server strategies: Flower's own, registered by name, plus the few that Flower lacks.

The registry is the one place where a strategy name is matched.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Strategy

from ffm.strategies.guard import RoundLog, UpdateGuard
from ffm.strategies.local_only import LocalOnly
from ffm.strategies.offset import RoundOffset, round_seed
from ffm.strategies.wrapper import StrategyWrapper

__all__ = [
    "STRATEGIES",
    "LocalOnly",
    "RoundLog",
    "RoundOffset",
    "StrategyWrapper",
    "UpdateGuard",
    "round_seed",
]

def _flower(cls: type[Strategy], **extra: float) -> Callable[[float, float], Strategy]:
    """A factory for one of Flower's strategies that runs with any number of nodes (>= 1)."""

    def build(fraction_train: float, fraction_evaluate: float) -> Strategy:
        return cls(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=int(fraction_evaluate > 0),
            min_available_nodes=1,
            **extra,
        )

    return build


# Every registered strategy is stateless between rounds, so a checkpoint of the global arrays is a
# complete checkpoint of the server. Stateful ones (FedAdam's moments) need state_dict() first.
STRATEGIES: dict[str, Callable[[float, float], Strategy]] = {
    "fedavg": _flower(FedAvg),
    "fedmedian": _flower(FedMedian),
    "fedtrimmedavg": _flower(FedTrimmedAvg, beta=0.2),
}
