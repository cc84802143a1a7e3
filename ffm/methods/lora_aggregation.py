"""The server side of LoRA federation: rank-aware averaging and exact aggregation (see
``ffm.methods.lora_federation`` for the method, its costs and the client side)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ffm.keys import ARRAYS_KEY, BASE_DELTA_PREFIX, METRICS_KEY, is_base_delta
from ffm.methods.lora_federation import RANK_KEY, lora_pairs
from ffm.strategies.wrapper import StrategyWrapper

__all__ = ["LoraAggregation"]


def _weights(contents: list[RecordDict]) -> list[float]:
    examples = [float(c[METRICS_KEY]["num-examples"]) for c in contents]
    total = sum(examples)
    return [e / total for e in examples]


class LoraAggregation(StrategyWrapper):
    """Around a mean-based rule: rank-aware averaging of the adapters, and the exact residual in the base."""

    def __init__(self, inner: Strategy, *, exact: bool, heterogeneous: bool, scaling: float) -> None:
        super().__init__(inner)
        self.exact, self.heterogeneous, self.scaling = exact, heterogeneous, scaling
        self._deltas: dict[str, torch.Tensor] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        state = arrays.to_torch_state_dict()
        self._deltas = {k: v for k, v in state.items() if is_base_delta(k)}  # they travel down with the state
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        contents = [m.content for m in ok]
        states = [c[ARRAYS_KEY].to_torch_state_dict() for c in contents]  # before the rule (FedMedian pops)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None or not states:
            return arrays, metrics
        p = _weights(contents)
        merged = arrays.to_torch_state_dict()
        pairs = lora_pairs(merged)
        if self.heterogeneous:
            ranks = [int(c[METRICS_KEY][RANK_KEY]) for c in contents]
            for a, b in pairs.values():
                merged[a] = _rank_mean([s[a] for s in states], ranks, p, dim=0)
                merged[b] = _rank_mean([s[b] for s in states], ranks, p, dim=1)
        if self.exact:
            deltas = dict(self._deltas)
            for module, (a, b) in pairs.items():
                mean_product = sum(pi * (s[b].double() @ s[a].double()) for pi, s in zip(p, states, strict=True))
                residual = self.scaling * (mean_product - merged[b].double() @ merged[a].double())
                key = f"{BASE_DELTA_PREFIX}{module}.base_layer.weight"
                previous = deltas.get(key)
                deltas[key] = (residual if previous is None else previous.double() + residual).float()
            merged.update(deltas)
        return ArrayRecord(merged), metrics

    # No state of its own: the deltas live in the global state itself (checkpointed with it).


def _rank_mean(values: list[torch.Tensor], ranks: list[int], p: list[float], *, dim: int) -> torch.Tensor:
    """Per rank component j (rows of A, columns of B): the p-weighted mean over the clients with rank > j."""
    full = values[0].shape[dim]
    out = torch.zeros_like(values[0], dtype=torch.float64)
    for j in range(full):
        holders = [(pi, v) for pi, v, r in zip(p, values, ranks, strict=True) if r > j]
        if not holders:
            continue
        total = sum(pi for pi, _ in holders)
        part = sum(pi * v.double().select(dim, j) for pi, v in holders) / total
        out.select(dim, j).copy_(part)
    return out.to(values[0].dtype)
