"""Client-side update clipping: Flower's ``fixedclipping_mod``, with the bound taken from the job.

Flower's mod clips ``reply - received`` to the L2 norm named ``clipping_norm`` in the train config, a key
that Flower's DP server wrapper writes. ffm's job names the bound itself (``client.clipping_norm``), so this
mod adds the key when the server did not send one, then lets Flower's mod do the clipping.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod

from ffm.config import JobConfig
from ffm.runtime.flwr_internals import KEY_CLIPPING_NORM

__all__ = ["fixed_clipping"]


def fixed_clipping(job: JobConfig) -> Mod:
    """Bound every train reply's update (reply - received state) to ``client.clipping_norm`` in L2 norm."""
    norm = job.client.clipping_norm

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        config = msg.content["config"]
        if KEY_CLIPPING_NORM not in config:
            msg.content["config"] = ConfigRecord({**config, KEY_CLIPPING_NORM: norm})
        return fixedclipping_mod(msg, context, call_next)

    return mod
