"""Continue round numbering after a resume, and make each round's client sampling depend on its number alone.

``Strategy.start`` always counts rounds from 1. A run resumed after round k must tell clients the true
round (their seeds derive from it) and sample the same clients as an uninterrupted run would, so that the
resumed run ends bit-identical. Flower samples with the global ``random`` module
(``strategy_utils.sample_nodes``), so each round re-seeds it from (seed, true round); Flower's DP wrappers
draw their noise from the global ``numpy.random``, re-seeded the same way before each aggregation.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ffm.keys import Salt, derive_seed
from ffm.strategies.wrapper import StrategyWrapper

__all__ = ["RoundOffset"]


class RoundOffset(StrategyWrapper):
    """Shift round numbers by ``offset`` and seed sampling per true round."""

    def __init__(self, inner: Strategy, *, offset: int, seed: int) -> None:
        super().__init__(inner)
        self.offset = offset
        self.seed = seed

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        random.seed(derive_seed(self.seed, server_round + self.offset, Salt.TRAIN_SAMPLING))
        return self.inner.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        np.random.seed(derive_seed(self.seed, server_round + self.offset, Salt.AGGREGATION_NOISE))
        return self.inner.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        random.seed(derive_seed(self.seed, server_round + self.offset, Salt.EVALUATE_SAMPLING))
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)
