"""Client-side update clipping: Flower's ``fixedclipping_mod``, with the bound taken from the job.

Flower's mod clips ``reply - received`` to the L2 norm named ``clipping_norm`` in the train config, a key
that Flower's DP server wrapper writes. Here the job names the bound itself (``client.max_update_norm``, a
robustness bound, not DP), so this mod adds the key when the server did not send one, then lets Flower's mod
do the clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod

from ffm.flwr_internals import KEY_CLIPPING_NORM
from ffm.keys import CONFIG_KEY
from ffm.mods.spec import ModSpec
from ffm.privacy.unchanged import takes_unchanged
from ffm.settings import Job, option, require

__all__ = ["FIXED_CLIPPING", "FixedClippingConfig", "fixed_clipping"]


@dataclass
class FixedClippingConfig:
    """The bound of mod 'fixedclipping'."""

    max_update_norm: float = option(1.0, "L2 bound on each client's update (mod 'fixedclipping'; DP's bound is "
                                    "privacy.clipping_norm)")

    def __post_init__(self) -> None:
        require(self.max_update_norm > 0.0, "client.max_update_norm must be > 0")


def fixed_clipping(job: Job) -> Mod:
    """Bound every train reply's update (reply - received state) to ``client.max_update_norm`` in L2 norm."""
    norm = job.client.max_update_norm
    clipping = takes_unchanged(fixedclipping_mod)  # ffm.privacy.unchanged: a reply equal to the model it got

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        config = msg.content[CONFIG_KEY]
        if KEY_CLIPPING_NORM not in config:
            msg.content[CONFIG_KEY] = ConfigRecord({**config, KEY_CLIPPING_NORM: norm})
        return clipping(msg, context, call_next)

    return mod


FIXED_CLIPPING = ModSpec(fixed_clipping, config=FixedClippingConfig)
