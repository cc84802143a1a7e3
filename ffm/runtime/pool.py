"""The LocalGrid's worker processes: a round's virtual clients in parallel, all on ONE copy of the frozen base.

The pool is forked after the process has built its Workspace (the ServerApp builds it before round 1), so
every worker finds the backbone already in memory and shares its pages copy-on-write: only what a client
writes (its trainable parameters, activations) becomes its own. Messages and node contexts cross as Flower's
own protobufs; each node's context stays with the LocalGrid (a worker gets it with the message and returns it
with the reply). Replies come back in the order the messages were sent, whatever finishes first, so
aggregation sees them in a fixed order and results do not depend on the number of workers (bit-identical at
the same torch threads per client). Why by hand: Flower's simulation engine runs on Ray, whose actors each
load their own copy of the model (bench/results/scale.md measures both).
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections.abc import Iterator

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from ffm.runtime.flwr_internals import (
    ErrorCode,
    ProtoContext,
    ProtoMessage,
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
)

__all__ = ["deliver_in_parallel"]

_APP: ClientApp | None = None  # the ClientApp, inherited by the forked workers


def _start(threads: int) -> None:
    torch.set_num_threads(threads)


def _serve(payload: tuple[bytes, bytes]) -> tuple[bytes, bytes, float, str]:
    """Run the ClientApp on one (message, context); return (reply, context after, seconds, failure)."""
    start = time.perf_counter()
    msg = message_from_proto(_parsed(ProtoMessage, payload[0]))
    context = context_from_proto(_parsed(ProtoContext, payload[1]))
    failure = ""
    try:
        reply = _APP(msg, context)
    except Exception as exc:  # a node's failure becomes its error reply, as on a SuperNode
        failure = traceback.format_exc(limit=4)
        reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"),
                        reply_to=msg)
    return (message_to_proto(reply).SerializeToString(), context_to_proto(context).SerializeToString(),
            time.perf_counter() - start, failure)


def _parsed(kind: type, data: bytes):  # a flwr.proto message of that kind
    proto = kind()
    proto.ParseFromString(data)
    return proto


def deliver_in_parallel(
    app: ClientApp, items: list[tuple[Message, Context]], workers: int, threads: int
) -> Iterator[tuple[Message, Context, float, str]]:
    """(reply, the node's context after, seconds, failure traceback or "") for each (message, context), in order,
    as they are ready; ``workers`` forked processes with ``threads`` torch threads each."""
    global _APP
    _APP = app
    payloads = [(message_to_proto(m).SerializeToString(), context_to_proto(c).SerializeToString()) for m, c in items]
    with multiprocessing.get_context("fork").Pool(min(workers, len(items)), _start, (threads,)) as pool:
        for reply, context, seconds, failure in pool.imap(_serve, payloads):  # imap keeps the messages' order
            yield (message_from_proto(_parsed(ProtoMessage, reply)), context_from_proto(_parsed(ProtoContext, context)),
                   seconds, failure)
