"""Poisson client sampling: each client trains in a round independently with probability q.

Flower's strategies sample a fixed number of clients per round. The Poisson privacy analysis (and
McMahan et al.'s DP-FedAvg) assumes each client joins independently with probability q, so the number
varies from round to round; ``federation.sampling=poisson`` draws rounds that way: this wrapper shows the
inner strategy (which then takes every node it is shown) only the nodes the draw picked. Each round's draw
depends on (seed, true round) alone, so a resumed run draws what an uninterrupted one would. A round that
draws nobody sends nothing (it fails in the guard and releases nothing; the accountant counts it anyway).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ffm.grid_view import NodeSubset
from ffm.keys import Salt, derive_seed
from ffm.strategies.wrapper import StrategyWrapper

__all__ = ["PoissonSampling", "poisson_draw"]


def poisson_draw(nodes: Iterable[int], rate: float, seed: int, server_round: int) -> list[int]:
    """The nodes a round's independent coin flips pick (each with probability ``rate``), in node order."""
    rng = random.Random(derive_seed(seed, server_round, Salt.POISSON_SAMPLING))
    return [node for node in sorted(nodes) if rng.random() < rate]


class PoissonSampling(StrategyWrapper):
    """Show the inner strategy only this round's Poisson-drawn nodes (it must take all it is shown)."""

    def __init__(self, inner: Strategy, *, rate: float, seed: int) -> None:
        super().__init__(inner)
        self.rate, self.seed = rate, seed

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        drawn = poisson_draw(grid.get_node_ids(), self.rate, self.seed, server_round)
        if not drawn:
            return []
        return self.inner.configure_train(server_round, arrays, config, NodeSubset(grid, set(drawn)))
