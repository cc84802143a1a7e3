"""Checkpoints of a run: after every round the global state AND the strategy's own state, so a resumed run
continues exactly (FedAdam's moments, FedAvgM's momentum, the local-only baseline's per-party states).

The nodes' own ``Context.state`` (SCAFFOLD's client control variates, personal heads) is saved too, as far as
the runtime offers it (:class:`ffm.carrier.Carrier`): the in-process LocalGrid does, so a resumed simulation is
exact as well; on a Flower federation each SuperNode keeps its own state and the carrier offers none.
"""

from __future__ import annotations

import logging

import torch
from flwr.serverapp.strategy import Strategy

from ffm.averaging import ModelAverage
from ffm.carrier import Carrier
from ffm.run_dir import RunDirectory
from ffm.strategies import load_strategy_state, strategy_state

__all__ = ["Checkpointer"]

logger = logging.getLogger("ffm")


class Checkpointer:
    """Save and restore a run's rounds: the global state, the strategy's state and the nodes' own."""

    def __init__(self, run: RunDirectory, strategy: Strategy, carrier: Carrier, *, keep_last: int = 0,
                 average: ModelAverage | None = None) -> None:
        self.run = run
        self.strategy = strategy
        self.carrier = carrier
        self.keep_last = keep_last
        self.average = average  # federation.ema's average of the rounds' models, kept like the strategy's state

    def save(self, server_round: int, state: dict[str, torch.Tensor]) -> None:
        """Write round ``server_round``'s checkpoint (atomically)."""
        extra = {"strategy": strategy_state(self.strategy)}
        nodes = self.carrier.node_states()
        if nodes:
            extra["nodes"] = nodes
        if self.average is not None:
            extra["average"] = self.average.state_dict()
        self.run.save_checkpoint(server_round, state, extra, keep_last=self.keep_last)

    def restore(self, initial: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
        """(last complete round, global state) of the run so far, with the strategy's state restored into it;
        (0, ``initial``) when there is no checkpoint yet."""
        checkpoint = self.run.latest_checkpoint()
        if checkpoint is None:  # interrupted before round 1 ended: start over, without the stale round-0 line
            self.run.keep_metrics_through(-1)
            return 0, initial
        load_strategy_state(self.strategy, checkpoint.get("extra", {}).get("strategy", {}))
        if "nodes" in checkpoint.get("extra", {}):
            self.carrier.load_node_states(checkpoint["extra"]["nodes"])
        if self.average is not None and "average" in checkpoint.get("extra", {}):
            self.average.load_state_dict(checkpoint["extra"]["average"])
        server_round = int(checkpoint["round"])
        self.run.keep_metrics_through(server_round)
        logger.info("resuming %s after round %d", self.run.path, server_round)
        return server_round, checkpoint["state"]
