"""The LocalGrid's worker processes: a round's virtual clients in parallel, all on ONE copy of the frozen base.

With ``workers`` = N the calling process is one of the N: it forks N - 1 helpers at the start of the round
and then works beside them, each of them claiming the next undelivered message from a shared counter. The
fork comes after the process has built its Workspace (the ServerApp builds it before round 1), so every
helper finds the backbone already in memory and shares its pages copy-on-write: only what a client writes
(its trainable parameters, activations) becomes its own, and the caller, idle in a pool of N, would hold a
whole process's working memory for nothing. Every message, the caller's included, crosses as Flower's own
protobufs and runs the same code; each node's context stays with the LocalGrid (it travels with the message
and returns with the reply). Replies are yielded in the order the messages were sent, whatever finishes
first, so aggregation sees them in a fixed order and results do not depend on the number of workers
(bit-identical at the same torch threads per client). A helper that dies (killed for memory) costs only
the message it held: that node's reply is an error, and the round goes on.

Why by hand: Flower's Simulation Engine runs on Ray, whose actors each load their own copy of the model
(bench/results/peer.md measures both).
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from collections.abc import Iterator
from multiprocessing.sharedctypes import Synchronized

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from ffm.flwr_internals import (
    ErrorCode,
    ProtoContext,
    ProtoMessage,
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
)

__all__ = ["deliver_in_parallel", "error_reply"]

_APP: ClientApp | None = None  # the ClientApp, inherited by the forked helpers
Served = tuple[bytes, bytes, float, str]  # (reply, context after, seconds, failure traceback or "")


def _serve(payload: tuple[bytes, bytes]) -> Served:
    """Run the ClientApp on one serialized (message, context)."""
    start = time.perf_counter()
    msg = message_from_proto(_parsed(ProtoMessage, payload[0]))
    context = context_from_proto(_parsed(ProtoContext, payload[1]))
    failure = ""
    try:
        reply = _APP(msg, context)
    except Exception as exc:  # a node's failure becomes its error reply, as on a SuperNode
        failure = traceback.format_exc(limit=4)
        reply = error_reply(msg, f"{type(exc).__name__}: {exc}")
    return (message_to_proto(reply).SerializeToString(), context_to_proto(context).SerializeToString(),
            time.perf_counter() - start, failure)


def error_reply(msg: Message, reason: str) -> Message:
    """The reply of a node whose ClientApp failed, as a SuperNode sends it."""
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def _parsed(kind: type, data: bytes):  # a flwr.proto message of that kind
    proto = kind()
    proto.ParseFromString(data)
    return proto


def _claim(counter: Synchronized, total: int, holding: Synchronized | None = None) -> int | None:
    """The next message nobody has claimed yet, or None when all are taken; a helper notes it in ``holding``
    under the same lock, so that no claimed message is ever unaccounted for if the helper dies."""
    with counter.get_lock():
        index = counter.value
        if index >= total:
            return None
        counter.value = index + 1
        if holding is not None:
            holding.value = index
        return index


def _helper(payloads: list[tuple[bytes, bytes]], counter: Synchronized, holding: Synchronized,
            out: multiprocessing.Queue, threads: int) -> None:
    """A forked helper: serve messages until none is left; ``holding`` says which one it is serving."""
    torch.set_num_threads(threads)
    while (index := _claim(counter, len(payloads), holding)) is not None:
        out.put((index, _serve(payloads[index])))
    holding.value = -1


def deliver_in_parallel(app: ClientApp, items: list[tuple[Message, Context]], workers: int,
                        threads: int) -> Iterator[tuple[Message, Context, float, str]]:
    """(reply, the node's context after, seconds, failure traceback or "") for each (message, context), in order,
    as they are ready: this process and ``workers`` - 1 forked helpers, ``threads`` torch threads each."""
    global _APP
    _APP = app
    payloads = [(message_to_proto(m).SerializeToString(), context_to_proto(c).SerializeToString()) for m, c in items]
    fork = multiprocessing.get_context("fork")
    counter = fork.Value("i", 0)
    out = fork.Queue()
    holding = [fork.Value("i", -1, lock=False) for _ in range(min(workers, len(items)) - 1)]
    helpers = [fork.Process(target=_helper, args=(payloads, counter, held, out, threads), daemon=True)
               for held in holding]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    done: dict[int, Served] = {}
    try:
        for helper in helpers:
            helper.start()
        for want in range(len(items)):
            while want not in done:
                _collect(out, done, block=False)
                if want in done:
                    break
                if (index := _claim(counter, len(items))) is not None:  # work beside the helpers
                    done[index] = _serve(payloads[index])
                    continue
                if not _collect(out, done, block=True):
                    _bury(helpers, holding, items, payloads, done)
            reply, context, seconds, failure = done.pop(want)
            yield (message_from_proto(_parsed(ProtoMessage, reply)), context_from_proto(_parsed(ProtoContext, context)),
                   seconds, failure)
    finally:
        torch.set_num_threads(before)
        for helper in helpers:
            helper.join(timeout=5)
            if helper.is_alive():
                helper.kill()


def _collect(out: multiprocessing.Queue, done: dict[int, Served], *, block: bool) -> bool:
    """Move the helpers' finished replies into ``done`` (waiting up to a second for one if ``block``);
    whether any came."""
    got = False
    try:
        while True:
            index, served = out.get(block=block and not got, timeout=1.0)
            done[index] = served
            got = True
    except queue.Empty:
        return got


def _bury(helpers: list, holding: list, items: list[tuple[Message, Context]],
          payloads: list[tuple[bytes, bytes]], done: dict[int, Served]) -> None:
    """A helper that died mid-message: that message's reply is an error (its node's context unchanged)."""
    for helper, held in zip(helpers, holding, strict=True):
        index = held.value
        if helper.exitcode not in (None, 0) and index >= 0 and index not in done:
            reason = f"the worker process serving this node died (exit code {helper.exitcode})"
            reply = message_to_proto(error_reply(items[index][0], reason)).SerializeToString()
            done[index] = (reply, payloads[index][1], 0.0, reason)
            held.value = -1
