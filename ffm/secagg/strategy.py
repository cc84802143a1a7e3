"""The server half of SecAgg+: a strategy wrapper around FedAvg / FedProx (their client sampling and metrics).

One train round becomes four exchanges on the same Grid (the wrapper is handed it in ``configure_train``):
``setup`` and ``share-keys`` (query messages, before the train messages go out), ``collect`` (the train
messages themselves: replies hold masked vectors only) and ``unmask`` (a query to the nodes that sent).
The server holds public keys, encrypted share bundles it routes unread, masked vectors, and at the end
shares of exactly the secrets it needs; it never holds one client's unmasked update. When too few shares
come back to remove every mask, the round fails (logged) and the global state is unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from ffm.errors import AggregationFailed
from ffm.flwr_internals import combine_shares
from ffm.secagg.mod import MASKED_KEY, SECAGG_KEY
from ffm.secagg.protocol import agree, dequantize, neighbours, prg, threshold_of
from ffm.settings import Job
from ffm.strategies.wrapper import StrategyWrapper

__all__ = ["SecAggPlus"]

logger = logging.getLogger("ffm")


class SecAggPlus(StrategyWrapper):
    """Around a plain-mean rule: the four SecAgg+ exchanges, then the rule's aggregate of the unmasked sum."""

    arrayrecord_key = None  # replies carry a masked vector, checked by the client before masking

    def __init__(self, inner: Strategy, job: Job) -> None:
        super().__init__(inner)
        self.job = job
        self._round: dict[str, Any] | None = None
        self.costs: dict[int, dict[str, float]] = {}  # per round: seconds and bytes of the protocol's own steps

    def _ask(self, grid: Grid, nodes: list[int], stage: dict[str, Any], per_node: dict[int, dict] | None = None
             ) -> dict[int, ConfigRecord]:
        """Send a stage's query to ``nodes``; the replies' ``secagg`` records by node (failed ones left out)."""
        messages = [Message(RecordDict({SECAGG_KEY: ConfigRecord({**stage, **(per_node or {}).get(n, {})})}),
                            dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
        self._cost["bytes"] += sum(_config_bytes(m.content[SECAGG_KEY]) for m in messages)
        out = {}
        for reply in grid.send_and_receive(messages):
            if not reply.has_error() and SECAGG_KEY in reply.content.config_records:
                out[int(reply.metadata.src_node_id)] = reply.content.config_records[SECAGG_KEY]
                self._cost["bytes"] += _config_bytes(out[int(reply.metadata.src_node_id)])
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        started = time.perf_counter()
        self._cost = {"bytes": 0.0}
        sampled = {int(m.metadata.dst_node_id): m for m in self.inner.configure_train(server_round, arrays, config,
                                                                                     grid)}
        dp, self._round = self.job.privacy, None
        keys = self._ask(grid, sorted(sampled), {"stage": "setup"})
        alive = sorted(keys)
        # every secret is shared among a node's neighbours and the node itself
        count = len(neighbours(alive, alive[0], dp.secagg_neighbours)) + 1 if len(alive) > 1 else 0
        threshold = threshold_of(dp.secagg_threshold, count)
        if len(alive) < 2 or count < threshold:
            logger.warning("round %d: secure aggregation needs at least 2 clients with keys, got %d", server_round,
                           len(alive))
            return []
        stage = {"stage": "share-keys", "nodes": alive, "c-pks": [bytes(keys[n]["c-pk"]) for n in alive],
                 "s-pks": [bytes(keys[n]["s-pk"]) for n in alive], "neighbours": dp.secagg_neighbours,
                 "threshold": threshold}
        bundles = self._ask(grid, alive, stage)
        if sorted(bundles) != alive:  # a node that shared no keys would leave masks nobody can remove
            logger.warning("round %d: %d of %d clients did not share their keys; round skipped", server_round,
                           len(alive) - len(bundles), len(alive))
            return []
        inbox: dict[int, tuple[list[int], list[bytes]]] = {n: ([], []) for n in alive}
        for src, record in bundles.items():
            for dst, blob in zip(record["dst"], record["ct"], strict=True):
                inbox[int(dst)][0].append(src)
                inbox[int(dst)][1].append(bytes(blob))
        self._round = {"round": server_round, "alive": alive, "threshold": threshold, "global": arrays,
                       "s-pks": {n: bytes(keys[n]["s-pk"]) for n in alive}}
        messages = []
        for node in alive:
            original = sampled[node].content  # Flower's strategies share one RecordDict between nodes: copy it
            content = RecordDict(dict(original.items()))
            content[SECAGG_KEY] = ConfigRecord({"stage": "collect", "src": inbox[node][0], "ct": inbox[node][1]})
            self._cost["bytes"] += _config_bytes(content[SECAGG_KEY])
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        self._cost["seconds"] = time.perf_counter() - started
        self._grid = grid
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        started = time.perf_counter()
        plan = self._round
        if plan is None or plan["round"] != server_round:
            raise AggregationFailed("secure aggregation: this round was not set up")
        vectors, weights, contents = {}, {}, []
        for msg in replies:
            if msg.has_error() or MASKED_KEY not in msg.content.array_records:
                continue
            node = int(msg.metadata.src_node_id)
            vectors[node] = msg.content[MASKED_KEY]["vector"].numpy().view(np.uint64)
            weights[node] = int(msg.content.config_records[SECAGG_KEY]["weight"])
            contents.append(msg.content)
        survivors = sorted(vectors)
        dropped = sorted(set(plan["alive"]) - set(survivors))
        if len(survivors) < plan["threshold"]:
            raise AggregationFailed(f"secure aggregation: {len(survivors)} masked update(s), fewer than the "
                                    f"threshold {plan['threshold']} (privacy.secagg_threshold)")
        shares = self._ask(self._grid, survivors, {"stage": "unmask", "dropped": dropped, "survivors": survivors})
        total = self._unmask(plan, vectors, dropped, shares)
        mean = dequantize(total, self.job.privacy.secagg_bound, self.job.privacy.secagg_bits) / sum(weights.values())
        self._cost["seconds"] += time.perf_counter() - started
        self.costs[server_round] = {**self._cost, "dropped": len(dropped), "survivors": len(survivors)}
        logger.info("round %d: secure aggregation of %d updates (%d dropped) in %.2f s, %.0f protocol bytes",
                    server_round, len(survivors), len(dropped), self._cost["seconds"], self._cost["bytes"])
        return _add(plan["global"], mean), aggregate_metricrecords(contents, "num-examples")

    def _unmask(self, plan: dict[str, Any], vectors: dict[int, np.ndarray], dropped: list[int],
                shares: dict[int, ConfigRecord]) -> np.ndarray:
        """The sum of the survivors' masked vectors with every mask removed."""
        held_b: dict[int, list[bytes]] = {}
        held_s: dict[int, list[bytes]] = {}
        for record in shares.values():
            for src, share in zip(record["b-src"], record["b-share"], strict=True):
                held_b.setdefault(int(src), []).append(bytes(share))
            for src, share in zip(record["s-src"], record["s-share"], strict=True):
                held_s.setdefault(int(src), []).append(bytes(share))
        t = plan["threshold"]
        short = [n for n in vectors if len(held_b.get(n, [])) < t] + [n for n in dropped if len(held_s.get(n, [])) < t]
        if short:
            raise AggregationFailed(f"secure aggregation: fewer than {t} shares came back for node(s) {short}; "
                                    "the masks cannot be removed")
        size = len(next(iter(vectors.values())))
        total = np.zeros(size, dtype=np.uint64)
        for node, vector in vectors.items():
            total = total + vector - prg(combine_shares(held_b[node][:t]), size)
        for gone in dropped:
            secret = combine_shares(held_s[gone][:t])
            for node in neighbours(plan["alive"], gone, self.job.privacy.secagg_neighbours):
                if node not in vectors:
                    continue
                mask = prg(agree(secret, plan["s-pks"][node], b"mask"), size)
                total = total - mask if node < gone else total + mask  # undo what `node` added for the pair
        return total


def _add(global_state: ArrayRecord, mean: np.ndarray) -> ArrayRecord:
    """global + the mean update, unflattened in sorted key order (the clients' order)."""
    out, at = {}, 0
    for key in sorted(global_state.keys()):
        array = global_state[key].numpy()
        out[key] = Array((array.astype(np.float64) + mean[at:at + array.size].reshape(array.shape)).astype(array.dtype))
        at += array.size
    if at != len(mean):
        raise AggregationFailed(f"secure aggregation: the updates hold {len(mean)} values, the state {at}")
    return ArrayRecord({k: out[k] for k in global_state.keys()})


def _config_bytes(record: ConfigRecord) -> int:
    """Payload bytes of a stage's record (keys, shares, ciphertexts; ints and strings as 8 bytes)."""
    total = 0
    for value in record.values():
        items = value if isinstance(value, list) else [value]
        total += sum(len(v) if isinstance(v, bytes) else 8 for v in items)
    return total
