"""Clipping that also takes a reply whose model is exactly the one the client received.

Flower's clipping, on both sides (the server-side DP wrappers, and the client mods ``fixedclipping_mod`` /
``adaptiveclipping_mod``), scales each update by ``min(1, C / ||update||)`` and so divides by zero when a client
returns the model it received: an honest reply (every local gradient underflowed to zero, as for a client whose
few examples the model already fits with certainty). On the server that killed the ServerApp; in a node it turned
the reply into an error, so the round lost an honest update (and, under adaptive clipping, its norm bit). Clipped,
such an update is zero and below the norm. It is passed on as the model with one coordinate moved by one ulp,
which clipping leaves as it is (its norm is far below any clipping norm) and which changes the noised sum by less
than that sum's own float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp.typing import ClientAppCallable, Mod

__all__ = ["UnchangedUpdates", "nudged_if_unchanged", "takes_unchanged"]


def nudged_if_unchanged(reply: Message, start: ArrayRecord) -> Message:
    """``reply`` itself, or, when its model is exactly ``start``, that model with one coordinate moved by one ulp."""
    if reply.has_error():
        return reply
    for name, record in list(reply.content.array_records.items()):
        # array by array, both sides read lazily, so that a changed model (every reply but the rare one) is read only
        # up to its first change
        if len(record) != len(start) or not all(np.array_equal(a.numpy(), b.numpy())
                                                for a, b in zip(record.values(), start.values(), strict=True)):
            continue
        arrays = record.to_numpy_ndarrays()
        first = next((i for i, a in enumerate(arrays) if a.dtype.kind == "f" and a.size), None)
        if first is None:
            continue
        moved = arrays[first].copy()
        moved.flat[0] = np.nextafter(moved.flat[0], np.inf, dtype=moved.dtype)
        arrays[first] = moved
        reply.content[name] = ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(record.keys(), arrays, strict=True)})
    return reply


class UnchangedUpdates:
    """Mixin for a Flower server-side clipping wrapper: every reply passes :func:`nudged_if_unchanged` first."""

    current_arrays: ArrayRecord

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round, [nudged_if_unchanged(r, self.current_arrays) for r in replies])


def takes_unchanged(clipping_mod: Mod) -> Mod:
    """Flower's client clipping mod ``clipping_mod``, with the reply it clips passed through
    :func:`nudged_if_unchanged` against the model the train message carried."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        records = list(msg.content.array_records.values()) if msg.metadata.message_type == MessageType.TRAIN else []
        if len(records) != 1:  # not a train message, or one Flower's mod refuses with its own error
            return clipping_mod(msg, context, call_next)
        start = records[0]  # the record the message carried (Flower's mod keeps the same one to clip against)

        def trained(inner: Message, ctx: Context) -> Any:
            return nudged_if_unchanged(call_next(inner, ctx), start)

        return clipping_mod(msg, context, trained)

    return mod
