"""A Strategy that delegates every protocol step to an inner Strategy; wrappers override one step each.

This is the pattern of Flower's own DP wrappers (``DifferentialPrivacyServerSideFixedClipping`` wraps any
strategy): cross-cutting server behaviour stays out of the aggregation rule. A wrapper passes its inner
strategy's state through ``state_dict`` / ``load_state_dict`` and its attributes through ``__getattr__``,
so wrappers compose in any order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ffm.strategies.state import load_strategy_state, strategy_state

__all__ = ["StrategyWrapper"]


class StrategyWrapper(Strategy):
    """Pass every step through to ``inner``."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # only called for attributes the wrapper lacks
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()

    def state_dict(self) -> dict[str, Any]:
        """The inner strategy's state (a wrapper keeps none of its own)."""
        return {"inner": strategy_state(self.inner)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the inner strategy's state."""
        load_strategy_state(self.inner, state.get("inner", {}))
