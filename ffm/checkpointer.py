"""Checkpoints of a run: after every round the global state AND the strategy's own state, so a resumed run
continues exactly (FedAdam's moments, FedAvgM's momentum, the local-only baseline's per-party states)."""

from __future__ import annotations

import logging

import torch
from flwr.serverapp.strategy import Strategy

from ffm.run_dir import RunDirectory
from ffm.strategies import load_strategy_state, strategy_state

__all__ = ["Checkpointer"]

logger = logging.getLogger("ffm")


class Checkpointer:
    def __init__(self, run: RunDirectory, strategy: Strategy, *, keep_last: int = 0) -> None:
        self.run = run
        self.strategy = strategy
        self.keep_last = keep_last

    def save(self, server_round: int, state: dict[str, torch.Tensor]) -> None:
        extra = {"strategy": strategy_state(self.strategy)}
        self.run.save_checkpoint(server_round, state, extra, keep_last=self.keep_last)

    def restore(self, initial: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
        """(last complete round, global state) of the run so far, with the strategy's state restored into it;
        (0, ``initial``) when there is no checkpoint yet."""
        checkpoint = self.run.latest_checkpoint()
        if checkpoint is None:  # interrupted before round 1 ended: start over, without the stale round-0 line
            self.run.keep_metrics_through(-1)
            return 0, initial
        load_strategy_state(self.strategy, checkpoint.get("extra", {}).get("strategy", {}))
        server_round = int(checkpoint["round"])
        self.run.keep_metrics_through(server_round)
        logger.info("resuming %s after round %d", self.run.path, server_round)
        return server_round, checkpoint["state"]
