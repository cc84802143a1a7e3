"""Per-class aggregation of a classification head: each class's row averaged over the parties that hold it.

Under label skew FedAvg averages a class's head row over every party, and most parties lack the class: their
local steps only push its logit down, so a class held by one or two parties can end up never predicted (BBC at
Dirichlet 0.1, bench/results/convergence.md). Here each party reports how many examples of each class it trained
on, and row ``c`` of the head becomes the mean of the parties' rows weighted by their counts of ``c`` (a class no
replying party holds keeps the inner rule's row); every other tensor is the inner rule's aggregate. This is the
class-weighted classifier averaging that FedAvg lacks (it weighs a party by its total examples only); the
backbone is still averaged as before. Its price: the server learns each party's label counts, so it is refused
where updates are masked or noised (secure aggregation, DP).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from ffm.keys import ARRAYS_KEY, METRICS_KEY
from ffm.models.head import head_keys
from ffm.strategies.wrapper import StrategyWrapper

__all__ = ["CLASS_COUNTS", "PerClassHead", "per_class_rows"]

logger = logging.getLogger("ffm")

CLASS_COUNTS = "class-counts"  # a train reply's metric: the party's training examples per class


def per_class_rows(rows: list[torch.Tensor], counts: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Row ``c`` = the mean of the parties' row ``c`` weighted by their counts of class ``c`` (``counts``:
    parties x classes); rows of a class no party holds come from ``fallback``."""
    stacked = torch.stack([r.double() for r in rows])  # parties x classes x ...
    weights = counts.double().reshape(*counts.shape, *([1] * (stacked.ndim - 2)))
    total = weights.sum(dim=0)
    mean = (stacked * weights).sum(dim=0) / total.clamp(min=1.0)
    held = (total > 0).expand_as(mean)
    return torch.where(held, mean, fallback.double()).to(fallback.dtype)


class PerClassHead(StrategyWrapper):
    """The inner rule's aggregate, with the head's rows replaced by their per-class weighted means."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if metrics is not None and CLASS_COUNTS in metrics:
            del metrics[CLASS_COUNTS]  # a weighted mean of count vectors means nothing
        valid = [r for r in replies if not r.has_error() and CLASS_COUNTS in r.content[METRICS_KEY]]
        if arrays is None or not valid:
            return arrays, metrics
        counts = torch.tensor([list(r.content[METRICS_KEY][CLASS_COUNTS]) for r in valid], dtype=torch.float64)
        state = arrays.to_torch_state_dict()
        keys = head_keys(state, counts.shape[1])
        if not keys:
            logger.warning("round %d: per-class head aggregation found no head tensor with %d rows in the update; "
                           "the inner rule's aggregate stands", server_round, counts.shape[1])
            return arrays, metrics
        for key in keys:  # only the head's tensors are read from each reply
            rows = [torch.from_numpy(r.content[ARRAYS_KEY][key].numpy()) for r in valid]
            state[key] = per_class_rows(rows, counts, state[key])
        return ArrayRecord(state), metrics
