"""Simulated dropouts: a client that leaves a train round without replying, with probability ``client.dropout``.

The draw is seeded by (job seed, round, partition id), so a run and its resume drop the same clients. The mod
raises, which the LocalGrid and a SuperNode both turn into the node's error reply: the server sees exactly what
a vanished client looks like, and its guard counts the round's usable updates against
``federation.min_train_clients``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from ffm.keys import CONFIG_KEY, PARTITION_ID, SERVER_ROUND, Salt, derive_seed
from ffm.mods.spec import ModSpec
from ffm.settings import Job, option, require

__all__ = ["DROPOUT", "ClientDroppedOut", "DropoutConfig", "dropout"]


class ClientDroppedOut(RuntimeError):
    """Raised by the dropout mod: this client does not reply this round."""


@dataclass
class DropoutConfig:
    """The probability of mod 'dropout'."""

    dropout: float = option(0.0, "probability that a client drops out of a train round, mid-round (mod 'dropout')")

    def __post_init__(self) -> None:
        require(0.0 <= self.dropout < 1.0, f"client.dropout must be in [0, 1), got {self.dropout}")


def dropout(job: Job) -> Mod:
    """Raise :class:`ClientDroppedOut` in a seeded share ``client.dropout`` of the train messages."""
    probability = job.client.dropout

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or probability <= 0.0:
            return call_next(msg, context)
        party = int(context.node_config.get(PARTITION_ID, 0))
        server_round = int(msg.content[CONFIG_KEY][SERVER_ROUND])
        if random.Random(derive_seed(job.seed, server_round, Salt.DROPOUT, party)).random() < probability:
            raise ClientDroppedOut(f"dropped out of round {server_round} (simulated, client.dropout={probability})")
        return call_next(msg, context)

    return mod


DROPOUT = ModSpec(dropout, config=DropoutConfig)
