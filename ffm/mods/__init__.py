"""Client mods (cross-cutting client behaviour around the ClientApp), named in the job's ``client.mods``.

Each registered :class:`ModSpec` builds a Flower mod from the job and adds its own keys to the ``client``
section (so do the update codecs). :func:`build_mods` gives a job's mods in order, outermost
first: the mods the job switches on by itself as outer (compression, secure aggregation), the mods the job
names, then those it switches on as inner (DP clipping). The ClientApp runs them per message, from the run
config of each message's Context, so the same ClientApp serves every job on the LocalGrid and on SuperNodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.clientapp.typing import Mod

from ffm.compression import CODECS
from ffm.mods.attack import ATTACK, FLIP_LABELS_KEY, is_attacker
from ffm.mods.clipping import FIXED_CLIPPING
from ffm.mods.compression import COMPRESSION
from ffm.mods.dp_clipping import ADAPTIVE_DP_CLIPPING, FIXED_DP_CLIPPING
from ffm.mods.dropout import DROPOUT, ClientDroppedOut
from ffm.mods.secure_aggregation import SECURE_AGGREGATION_MOD
from ffm.mods.spec import MODS, ModSpec
from ffm.settings import MOVED, SECTIONS, Composite, Job, SectionSpec, items, require

__all__ = ["FLIP_LABELS_KEY", "MODS", "ClientConfig", "ClientDroppedOut", "ModSpec", "build_mods", "is_attacker",
           "mod_names"]


@dataclass
class ClientConfig:
    """Cross-cutting client behaviour: the mods the job names, and every mod's and codec's own keys."""

    mods: list[str] = items("Flower mods around the ClientApp, outermost first; registered",
                            choices=lambda: MODS.names())

    def __post_init__(self) -> None:
        for name in self.mods:
            by = MODS[name].switched_on_by if name in MODS else ""
            require(not by, f"client.mods: '{name}' is switched on by {by}, with what it needs; set that instead "
                    "of naming the mod")


MODS.register("fixedclipping", FIXED_CLIPPING)
MODS.register("dropout", DROPOUT)
MODS.register("attack", ATTACK)
MODS.register("compression", COMPRESSION)
MODS.register("dpclipping", FIXED_DP_CLIPPING)
MODS.register("adaptiveclipping", ADAPTIVE_DP_CLIPPING)
MODS.register("secaggplus", SECURE_AGGREGATION_MOD)
MOVED["client.clipping_norm"] = "client.max_update_norm"  # it stood beside DP's privacy.clipping_norm
SECTIONS.register("client", SectionSpec(Composite(ClientConfig, MODS, CODECS), position=10))


def mod_names(job: Job) -> list[str]:
    """The mods that run around the ClientApp for ``job``, outermost first."""
    implied = {name: spec.implied(job) for name, spec in MODS.items() if spec.implied is not None}
    outer = [name for name, place in implied.items() if place == "outer"]
    inner = [name for name, place in implied.items() if place == "inner"]
    named = [name for name in job.client.mods if name not in outer and name not in inner]
    return outer + named + inner


def build_mods(job: Job) -> list[Mod]:
    """The Flower mods of ``job``, outermost first (the ClientApp's one mod runs them per message)."""
    return [MODS[name].build(job) for name in mod_names(job)]
