"""Checkpoints of a run: after every round the global state AND the strategy's own state, so a resumed run
continues exactly (FedAdam's moments, FedAvgM's momentum, the local-only baseline's per-party states).

When the Grid holds its nodes in this process (the LocalGrid: it has ``node_states``), the nodes' own
``Context.state`` is saved too (SCAFFOLD's client control variates, personal heads), so a resumed simulation
is exact as well. On a Flower federation each SuperNode keeps its own state and the Grid offers none.
"""

from __future__ import annotations

import logging

import torch
from flwr.serverapp.strategy import Strategy

from ffm.run_dir import RunDirectory
from ffm.strategies import load_strategy_state, strategy_state

__all__ = ["Checkpointer"]

logger = logging.getLogger("ffm")


class Checkpointer:
    def __init__(self, run: RunDirectory, strategy: Strategy, *, keep_last: int = 0, grid: object = None) -> None:
        self.run = run
        self.strategy = strategy
        self.keep_last = keep_last
        self.grid = grid if hasattr(grid, "node_states") else None

    def save(self, server_round: int, state: dict[str, torch.Tensor]) -> None:
        extra = {"strategy": strategy_state(self.strategy)}
        if self.grid is not None:
            extra["nodes"] = self.grid.node_states()
        self.run.save_checkpoint(server_round, state, extra, keep_last=self.keep_last)

    def restore(self, initial: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
        """(last complete round, global state) of the run so far, with the strategy's state restored into it;
        (0, ``initial``) when there is no checkpoint yet."""
        checkpoint = self.run.latest_checkpoint()
        if checkpoint is None:  # interrupted before round 1 ended: start over, without the stale round-0 line
            self.run.keep_metrics_through(-1)
            return 0, initial
        load_strategy_state(self.strategy, checkpoint.get("extra", {}).get("strategy", {}))
        if self.grid is not None and "nodes" in checkpoint.get("extra", {}):
            self.grid.load_node_states(checkpoint["extra"]["nodes"])
        server_round = int(checkpoint["round"])
        self.run.keep_metrics_through(server_round)
        logger.info("resuming %s after round %d", self.run.path, server_round)
        return server_round, checkpoint["state"]
