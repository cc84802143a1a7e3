"""The server side of LoRA federation: heterogeneous ranks (each party's share trimmed to its rank on the wire;
component mean, FlexLoRA or FLoRA's stacking) and exact aggregation (see ``ffm.methods.lora_federation`` for
the method, its costs and the client side)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ffm.keys import ARRAYS_KEY, BASE_DELTA_PREFIX, CLIENT_KEY, CONFIG_KEY, METRICS_KEY, PARTITION_ID, is_base_delta
from ffm.methods.lora_federation import RANK_KEY, lora_pairs, pad_rank, trim_rank
from ffm.strategies.wrapper import StrategyWrapper

__all__ = ["LoraAggregation"]


def _weights(contents: list[RecordDict]) -> list[float]:
    examples = [float(c[METRICS_KEY]["num-examples"]) for c in contents]
    total = sum(examples)
    return [e / total for e in examples]


class LoraAggregation(StrategyWrapper):
    """Around a mean-based rule: each party's rank on the wire, the ranks combined, the exact residual in the base."""

    def __init__(self, inner: Strategy, *, exact: bool, heterogeneous: bool, scaling: float,
                 rank_of: Callable[[int], int] | None = None, rank_rule: str = "mean") -> None:
        super().__init__(inner)
        self.heterogeneous, self.scaling, self.rank_rule = heterogeneous, scaling, rank_rule
        self.exact = exact or (heterogeneous and rank_rule == "stack")  # stacking folds the exact mean into the base
        self.rank_of = rank_of
        self.partition_of: dict[int, int] = {}  # node id -> partition id (random on a real federation)
        self._deltas: dict[str, torch.Tensor] = {}
        self._start: dict[str, torch.Tensor] = {}  # the round's global adapters (stacking restarts from them)
        self._full = 0  # the global adapters' rank

    def _learn_partitions(self, nodes: list[int], grid: Grid, server_round: int) -> None:
        """Ask the nodes whose data owner is not known yet (a reply without tensors)."""
        unknown = sorted(set(nodes) - set(self.partition_of))
        if not unknown:
            return
        asks = [Message(RecordDict({CONFIG_KEY: ConfigRecord({})}), dst_node_id=node,
                        message_type=MessageType.QUERY, group_id=str(server_round)) for node in unknown]
        for reply in grid.send_and_receive(asks):
            if not reply.has_error() and CLIENT_KEY in reply.content.config_records:
                self.partition_of[reply.metadata.src_node_id] = int(reply.content[CLIENT_KEY][PARTITION_ID])

    def _trimmed(self, server_round: int, messages: Iterable[Message], grid: Grid) -> list[Message]:
        """Each message with the global adapters cut to its node's rank: a party never receives components it
        does not train (a node whose owner is unknown gets them all and pads nothing)."""
        messages = list(messages)
        if not self.heterogeneous or self.rank_of is None:
            return messages
        self._learn_partitions([m.metadata.dst_node_id for m in messages], grid, server_round)
        by_rank: dict[int, ArrayRecord] = {}
        out = []
        for msg in messages:
            party = self.partition_of.get(msg.metadata.dst_node_id)
            if party is None or ARRAYS_KEY not in msg.content.array_records:
                out.append(msg)
                continue
            rank = self.rank_of(party)
            if rank not in by_rank:
                by_rank[rank] = ArrayRecord(trim_rank(msg.content[ARRAYS_KEY].to_torch_state_dict(), rank))
            content = RecordDict(dict(msg.content.items()))
            content[ARRAYS_KEY] = by_rank[rank]
            out.append(Message(content, dst_node_id=msg.metadata.dst_node_id,
                               message_type=msg.metadata.message_type, group_id=msg.metadata.group_id))
        return out

    def expand_reply(self, content: RecordDict) -> None:
        """A trimmed reply back at the global rank (the update guard calls this before it checks the shapes)."""
        if self.heterogeneous and self._full and ARRAYS_KEY in content.array_records:
            content[ARRAYS_KEY] = ArrayRecord(pad_rank(content[ARRAYS_KEY].to_torch_state_dict(), self._full))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        state = arrays.to_torch_state_dict()
        self._deltas = {k: v for k, v in state.items() if is_base_delta(k)}  # they travel down with the state
        pairs = lora_pairs(state)
        self._start = {k: state[k].clone() for pair in pairs.values() for k in pair}
        self._full = next((state[a].shape[0] for a, _ in pairs.values()), 0)
        return self._trimmed(server_round, self.inner.configure_train(server_round, arrays, config, grid), grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._trimmed(server_round, self.inner.configure_evaluate(server_round, arrays, config, grid), grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        for msg in ok:
            if CLIENT_KEY in msg.content.config_records:
                self.partition_of[msg.metadata.src_node_id] = int(msg.content[CLIENT_KEY][PARTITION_ID])
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
                if self.rank_rule == "flexlora":
                    merged[b], merged[a] = _flexlora([s[b] for s in states], [s[a] for s in states], p)
                elif self.rank_rule == "stack":  # the adapters restart; their mean product goes to the base
                    merged[a], merged[b] = self._start[a].clone(), torch.zeros_like(self._start[b])
                else:
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

    def state_dict(self) -> dict:
        """The inner rule's state (the deltas live in the global state itself; node ids are learned again)."""
        return super().state_dict()


def _flexlora(bs: list[torch.Tensor], as_: list[torch.Tensor], p: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexLoRA: the p-weighted mean of the products B_i A_i, as rank-r factors by truncated SVD (B = U sqrt(S),
    A = sqrt(S) V^T; components by falling singular value, so the first r_i are the best rank-r_i part)."""
    mean = sum(pi * (b.double() @ a.double()) for pi, b, a in zip(p, bs, as_, strict=True))
    u, s, vh = torch.linalg.svd(mean, full_matrices=False)
    r = as_[0].shape[0]
    root = s[:r].sqrt()
    return (u[:, :r] * root).to(bs[0].dtype), (root[:, None] * vh[:r]).to(as_[0].dtype)


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
