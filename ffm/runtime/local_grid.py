"""LocalGrid: an in-process Flower Grid that delivers each message to the ClientApp of N virtual nodes.

It is what a SuperLink + SuperNodes do, minus the network: every node gets its own ``Context``
(``partition-id`` in its node config, a ``state`` that persists across rounds), replies come back as
Flower Messages, a ClientApp that raises yields an error reply (as on a real SuperNode), and the array
bytes of every message are counted each way. Virtual nodes run one after another in this process, so
they share one copy of the frozen backbone (see ``ffm.workspace``).
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from ffm.carrier import Carrier
from ffm.flwr_internals import Run, set_message_id, set_task_identity
from ffm.keys import PARTITION_ID, PERSONAL_KEY
from ffm.models.state import state_nbytes
from ffm.node_state import pack, unpack
from ffm.runtime.pool import deliver_in_parallel, error_reply

__all__ = ["LocalGrid"]

logger = logging.getLogger("ffm")


def _payload(msg: Message) -> int:
    return 0 if msg.has_error() else sum(state_nbytes(r) for r in msg.content.array_records.values())


class LocalGrid(Grid, Carrier):
    """Drive ``client_app`` for ``num_nodes`` virtual nodes (node ids 1..N, partition ids 0..N-1).

    Its nodes live in this process, so it also offers the ServerApp every runtime service (:class:`Carrier`):
    the nodes' own state for checkpoints, each party's personal part, and replies handed over one by one.
    """

    def __init__(
        self,
        client_app: ClientApp,
        *,
        num_nodes: int,
        run_config: dict[str, bool | float | int | str],
        run_id: int = 1,
        workers: int = 1,
        threads: int = 0,
        node_configs: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        set_task_identity(run_id)
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self.contexts = {
            pid + 1: Context(
                run_id=run_id,
                node_id=pid + 1,
                node_config={PARTITION_ID: pid, "num-partitions": num_nodes, **(node_configs or {}).get(pid, {})},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for pid in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        self.streaming = False  # train replies one at a time, as the reader asks (streaming aggregation)
        self.workers = workers  # > 1: a round's nodes run in forked processes (ffm.runtime.pool)
        self.threads = threads or max(1, torch.get_num_threads() // max(1, workers))
        self.bytes_down = 0
        self.bytes_up = 0
        self.client_seconds = 0.0

    def node_states(self) -> dict[int, dict[str, Any]]:
        """Every virtual node's ``Context.state`` (SCAFFOLD's control variate, a personal head), for checkpoints.

        Only an in-process Grid can offer this: on a Flower federation each SuperNode keeps its own state.
        """
        return {node: pack(ctx.state) for node, ctx in self.contexts.items() if len(ctx.state)}

    def load_node_states(self, states: dict[int, dict[str, Any]]) -> None:
        """Restore what :meth:`node_states` saved (a resumed simulation continues with the nodes' own state)."""
        for node, packed in states.items():
            self.contexts[int(node)].state = unpack(packed)

    def personal_states(self) -> dict[int, dict[str, torch.Tensor]]:
        """Each virtual node's kept part (``method.personal``) by partition id, for the final evaluation."""
        return {int(ctx.node_config[PARTITION_ID]): ctx.state[PERSONAL_KEY].to_torch_state_dict()
                for ctx in self.contexts.values() if PERSONAL_KEY in ctx.state.array_records}

    def partition_ids(self, grid: Grid) -> dict[int, int]:
        """Node id -> partition id of this grid's virtual nodes (``grid`` may show a subset of them)."""
        shown = set(grid.get_node_ids())
        return {node: int(ctx.node_config[PARTITION_ID]) for node, ctx in self.contexts.items() if node in shown}

    def stream_replies(self, on: bool) -> None:
        """Deliver train messages lazily, one reply at a time as the reader asks (streaming aggregation)."""
        self.streaming = on

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message now; its reply waits to be pulled by the returned message id."""
        return [reply.metadata.reply_to_message_id for reply in self._delivered(list(messages))]

    def _delivered(self, messages: list[Message]) -> Iterator[Message]:
        """Deliver ``messages`` (in worker processes when there are several and ``workers`` > 1); store and
        yield each reply in message order, as it is ready."""
        for msg in messages:
            if msg.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"no virtual node {msg.metadata.dst_node_id} (nodes: 1..{len(self.contexts)})")
            # The SuperLink assigns message ids; replies point back to them (as InMemoryGrid does).
            set_message_id(msg, uuid.uuid4().hex)
            self.bytes_down += _payload(msg)
        if self.workers > 1 and len(messages) > 1:
            items = [(msg, self.contexts[msg.metadata.dst_node_id]) for msg in messages]
            results = deliver_in_parallel(self.client_app, items, self.workers, self.threads)
            for msg, (reply, context, seconds, failure) in zip(messages, results, strict=True):
                if failure:
                    logger.warning("node %s failed:\n%s", msg.metadata.dst_node_id, failure)
                self.contexts[msg.metadata.dst_node_id].state = context.state
                self.client_seconds += seconds
                yield self._store(msg, reply)
            return
        for msg in messages:
            yield self._store(msg, self._deliver(msg))

    def _deliver(self, msg: Message) -> Message:
        """One node's reply, in this process, at ``threads`` torch threads (as a worker process would run it)."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._run_node(msg)
        finally:
            torch.set_num_threads(before)

    def _store(self, msg: Message, reply: Message) -> Message:
        self.bytes_up += _payload(reply)
        self._replies[msg.metadata.message_id] = reply
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if self.streaming and messages and all(m.metadata.message_type == MessageType.TRAIN for m in messages):
            return self._one_by_one(messages)
        return self.pull_messages(self.push_messages(messages))

    def _one_by_one(self, messages: list[Message]) -> Iterator[Message]:
        """Each node's reply when the reader asks for it: no round's replies are ever all held at once."""
        for reply in self._delivered(messages):
            yield from self.pull_messages([reply.metadata.reply_to_message_id])

    def _run_node(self, msg: Message) -> Message:
        start = time.perf_counter()
        try:
            return self.client_app(_node_copy(msg), self.contexts[msg.metadata.dst_node_id])
        except Exception as exc:  # a node's failure becomes its error reply, as on a SuperNode
            logger.warning("node %s failed:\n%s", msg.metadata.dst_node_id, traceback.format_exc(limit=4))
            return error_reply(msg, f"{type(exc).__name__}: {exc}")
        finally:
            self.client_seconds += time.perf_counter() - start


def _node_copy(msg: Message) -> Message:
    """The message as its node receives it: a content of its own, as after a real transport.

    Flower's strategies send every node the same RecordDict object; a mod or ClientApp that replaces a record
    (the attack mod marks its train config) would otherwise change what the next virtual node receives. Config
    and metric records are copied; array records (large, read-only by convention) are shared.
    """
    records = {key: (record if isinstance(record, ArrayRecord) else type(record)(dict(record)))
               for key, record in msg.content.items()}
    copied = copy.copy(msg)
    copied.content = RecordDict(records)
    return copied
