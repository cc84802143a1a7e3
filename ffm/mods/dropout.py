"""Simulated dropouts: a client that leaves a train round without replying, with probability ``client.dropout``.

The draw is seeded by (job seed, round, partition id), so a run and its resume drop the same clients. The mod
raises, which the LocalGrid and a SuperNode both turn into the node's error reply: the server sees exactly what
a vanished client looks like, and its guard counts the round's usable updates against
``federation.min_train_clients``.
"""

from __future__ import annotations

import random

from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from ffm.config import JobConfig
from ffm.strategies.offset import round_seed

__all__ = ["ClientDroppedOut", "dropout"]


class ClientDroppedOut(RuntimeError):
    """Raised by the dropout mod: this client does not reply this round."""


def dropout(job: JobConfig) -> Mod:
    probability = job.client.dropout

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or probability <= 0.0:
            return call_next(msg, context)
        party = int(context.node_config.get("partition-id", 0))
        server_round = int(msg.content["config"]["server-round"])
        if random.Random(round_seed(job.seed, server_round, salt=7000 + party)).random() < probability:
            raise ClientDroppedOut(f"dropped out of round {server_round} (simulated, client.dropout={probability})")
        return call_next(msg, context)

    return mod
