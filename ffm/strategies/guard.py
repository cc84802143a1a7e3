"""Reject unusable client updates before aggregation, and record what each round moved.

A reply whose arrays hold NaN/inf, miss or add a key, or change a shape is dropped and logged; the round
goes on with the others. A round left with fewer usable updates than ``min_updates`` (dropouts, errors,
rejections) fails: it is logged, the global state stays as it was, and the run goes on; ``max_failed_rounds``
failed rounds in a row stop the run (RoundFailedError), since then something is wrong beyond bad luck.
Flower's FedAvg already drops replies that carry an error; this wrapper adds the content checks it lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ffm.errors import AggregationFailed, RoundFailedError
from ffm.keys import ARRAYS_KEY, CLIENT_KEY, METRICS_KEY, PARTITION_ID, is_base_delta
from ffm.models.state import check_update, state_nbytes
from ffm.strategies.streaming import RunningMean
from ffm.strategies.wrapper import StrategyWrapper

__all__ = ["RoundLog", "UpdateGuard"]

logger = logging.getLogger("ffm")


@dataclass
class RoundLog:
    """What one round moved and who took part (one line of metrics.jsonl is built from it)."""

    clients: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    bytes_down: int = 0
    bytes_up: int = 0
    evaluate: dict = field(default_factory=dict)
    failed: str = ""  # why the round changed nothing (empty: it aggregated)


def _reply_info(msg: Message) -> dict:
    info: dict = {"node": msg.metadata.src_node_id}
    client = msg.content.config_records.get(CLIENT_KEY) if not msg.has_error() else None
    if client is not None:
        info.update({key.replace("-", "_"): value for key, value in client.items()})
    return info


def _common_metrics(replies: list[Message]) -> None:
    """Keep only the metric keys every reply has: Flower's aggregation refuses replies whose MetricRecords differ
    (a data-less canary client reports fewer; each client's full metrics are already in the round's log)."""
    keys = [set(msg.content[METRICS_KEY].keys()) for msg in replies]
    common = set.intersection(*keys) if keys else set()
    if any(k != common for k in keys):
        for msg in replies:
            msg.content[METRICS_KEY] = MetricRecord({k: v for k, v in msg.content[METRICS_KEY].items() if k in common})


def _party_order(msg: Message) -> tuple[int, int]:
    client = msg.content.config_records.get(CLIENT_KEY) if not msg.has_error() else None
    party = int(client.get(PARTITION_ID, -1)) if client is not None else -1
    return party, msg.metadata.src_node_id


class UpdateGuard(StrategyWrapper):
    """Drop invalid train replies; count payload bytes each way; keep a RoundLog per round."""

    def __init__(self, inner: Strategy, *, min_updates: int = 1, max_failed_rounds: int = 1,
                 decoder: Callable[[dict, ArrayRecord], ArrayRecord] | None = None, streaming: bool = False,
                 evaluates: Callable[[int], bool] | None = None) -> None:
        super().__init__(inner)
        self.evaluates = evaluates  # which rounds the clients evaluate on their validation splits (None: all)
        self.streaming = streaming  # fold replies into a running mean as they arrive (ffm.strategies.streaming)
        self.decoder = decoder  # compressed updates: (state sent, encoded reply) -> the trained state
        self._sent: dict = {}
        self.min_updates, self.max_failed_rounds = min_updates, max_failed_rounds
        self.failed_in_a_row = 0
        self.rounds: dict[int, RoundLog] = {}
        self._asked: set[int] = set()  # nodes sent a train message this round
        self.silent: set[int] = set()  # nodes that did not answer this round's training (not asked to evaluate)
        self._expected: dict = {}
        self._dtypes: dict = {}

    def _log(self, server_round: int) -> RoundLog:
        return self.rounds.setdefault(server_round, RoundLog())

    def _count_down(self, server_round: int, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for msg in messages:
            self._log(server_round).bytes_down += sum(state_nbytes(r) for r in msg.content.array_records.values())
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Base deltas (exact LoRA aggregation) travel down only: replies carry the trainable state alone.
        self._expected = {name: tuple(array.shape) for name, array in arrays.items() if not is_base_delta(name)}
        self._dtypes = {name: array.dtype for name, array in arrays.items()}
        if self.decoder is not None:
            self._sent = {k: v for k, v in arrays.to_torch_state_dict().items() if not is_base_delta(k)}
        messages = self._count_down(server_round, self.inner.configure_train(server_round, arrays, config, grid))
        self._asked = {msg.metadata.dst_node_id for msg in messages}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        log = self._log(server_round)
        kept: list[Message] = []
        running = RunningMean(ARRAYS_KEY, METRICS_KEY) if self.streaming else None
        if isinstance(replies, list | tuple):  # a Flower Grid's replies come in arrival order: aggregate them in
            replies = sorted(replies, key=_party_order)  # party order, so that a float sum is reproducible
        answered: set[int] = set()
        count = 0
        for msg in replies:
            count += 1
            answered.add(msg.metadata.src_node_id)
            info = _reply_info(msg)
            if msg.has_error():
                log.rejected.append({**info, "reason": f"client error: {msg.error.reason}"})
                continue
            log.bytes_up += sum(state_nbytes(r) for r in msg.content.array_records.values())
            expand = getattr(self.inner, "expand_reply", None)  # a share that travels trimmed (a lower LoRA rank)
            if expand is not None:
                expand(msg.content)
            problem = self._decode(msg) or self._problem(msg)
            if problem:
                logger.warning("round %d: rejected update from node %s: %s", server_round, info["node"], problem)
                log.rejected.append({**info, "reason": problem})
                continue
            metrics = msg.content[METRICS_KEY]
            log.clients.append({**info, **{k.replace("-", "_"): v for k, v in metrics.items()}})
            if running is not None:
                running.add(msg)  # and the reply is let go: memory does not grow with the clients
            else:
                kept.append(msg)
        # Every message that got a reply, an error one included, was answered: the SuperLink's error reply for a
        # node it lost need not carry that node's id, so only a shortfall in the count makes a node silent.
        self.silent = self._asked - answered if count < len(self._asked) else set()
        for node in sorted(self.silent):  # a node paused or gone: its reply is a failure of this round
            logger.warning("round %d: node %s did not answer within federation.round_timeout", server_round, node)
            log.rejected.append({"node": node, "reason": "no reply within federation.round_timeout"})
        usable = running.count if running is not None else len(kept)
        if running is not None and running.count:
            kept = [running.reply()]
        if usable < self.min_updates:
            reasons = "; ".join(f"node {r['node']}: {r['reason']}" for r in log.rejected[:3]) or "no replies"
            what = "no client returned a usable update" if not usable else (
                f"{usable} usable update(s), fewer than federation.min_train_clients={self.min_updates}")
            return self._fail(server_round, log, f"{what} ({reasons})")
        _common_metrics(kept)
        try:
            arrays, metrics = self.inner.aggregate_train(server_round, kept)
        except AggregationFailed as exc:
            return self._fail(server_round, log, str(exc))
        self.failed_in_a_row = 0
        return (None if arrays is None else self._same_dtypes(arrays)), metrics

    def _fail(self, server_round: int, log: RoundLog, what: str) -> tuple[None, None]:
        self.failed_in_a_row += 1
        if self.failed_in_a_row >= self.max_failed_rounds:
            raise RoundFailedError(f"round {server_round}: {what}; {self.failed_in_a_row} failed round(s) in a row "
                                   "(federation.max_failed_rounds)")
        log.failed = what
        logger.warning("round %d failed, global state unchanged: %s", server_round, log.failed)
        return None, None

    def _same_dtypes(self, arrays: ArrayRecord) -> ArrayRecord:
        """The aggregate in the global state's dtypes: Flower's FedOpt rules return float64 arrays, which would
        double every later round's bytes down (and are not what the model holds)."""
        if all(self._dtypes.get(name, array.dtype) == array.dtype for name, array in arrays.items()):
            return arrays
        return ArrayRecord({name: Array(array.numpy().astype(self._dtypes.get(name, array.dtype), copy=False))
                            for name, array in arrays.items()})

    def _decode(self, msg: Message) -> str | None:
        """Replace a compressed reply's arrays by the state they encode; why it cannot be decoded, or None."""
        if self.decoder is None or ARRAYS_KEY not in msg.content.array_records:
            return None
        try:
            msg.content[ARRAYS_KEY] = self.decoder(self._sent, msg.content[ARRAYS_KEY])
        except ValueError as exc:
            return f"undecodable compressed update: {exc}"
        return None

    def _problem(self, msg: Message) -> str | None:
        """Records are found by key: other records (a control variate, a score table) pass to the strategy."""
        content = msg.content
        if METRICS_KEY not in content.metric_records:
            return f"no MetricRecord '{METRICS_KEY}' (with num-examples)"
        key = getattr(self.inner, "arrayrecord_key", ARRAYS_KEY)
        if key is None:  # replies that carry no state (prompt scores, FedKSeed's step records): the rule checks
            check = getattr(self.inner, "reply_problem", None)
            return check(content) if check is not None else None
        if key not in content.array_records:
            return f"no ArrayRecord '{key}' in the reply"
        return check_update(content[key].to_torch_state_dict(), self._expected)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.evaluates is not None and not self.evaluates(server_round):
            return []  # federation.evaluate_every: no validation this round
        messages = self.inner.configure_evaluate(server_round, arrays, config, grid)
        # a node that missed this round's training would cost the round a second timeout
        return self._count_down(server_round, [m for m in messages if m.metadata.dst_node_id not in self.silent])

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        if not replies and self.evaluates is not None and not self.evaluates(server_round):
            return None
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self._log(server_round).evaluate = dict(metrics)
        return metrics
