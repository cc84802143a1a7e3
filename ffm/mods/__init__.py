"""Client mods (cross-cutting client behaviour around the ClientApp), named in the job's ``client.mods``.

Each entry builds a Flower mod from the job. :func:`job_mods` is the one mod the ClientApp is created
with: it reads the run config of each message's Context and runs the mods the job names, in order, so the
same ClientApp serves every job on the LocalGrid and on SuperNodes.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod

from ffm.compression.mod import compression_mod
from ffm.config import JobConfig, job_from_run_config
from ffm.mods.attack import FLIP_LABELS_KEY, attack, is_attacker
from ffm.mods.clipping import fixed_clipping
from ffm.mods.dropout import ClientDroppedOut, dropout
from ffm.registry import Registry
from ffm.secagg.mod import secagg_mod

__all__ = ["FLIP_LABELS_KEY", "MODS", "ClientDroppedOut", "is_attacker", "job_mods"]

MODS: Registry[Callable[[JobConfig], Mod]] = Registry("client.mods")
MODS.register("fixedclipping", fixed_clipping)
MODS.register("dropout", dropout)
MODS.register("attack", attack)
# Client-side DP: the server's Flower DP wrapper sends the clipping norm, these Flower mods clip to it.
MODS.register("dpclipping", lambda job: fixedclipping_mod)
MODS.register("adaptiveclipping", lambda job: adaptiveclipping_mod)
MODS.register("secaggplus", secagg_mod)
MODS.register("compression", compression_mod)


def job_mods(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the mods named by the job in ``context.run_config`` around the ClientApp (first named = outermost).

    Client-side DP (``privacy.side=client``) adds Flower's clipping mod of its kind innermost: the update is
    clipped on the node, right after training, before any other mod sees it. ``client.compression`` adds the
    compression mod outermost: it encodes the update the others leave.
    """
    job = job_from_run_config(context.run_config)
    names = list(job.client.mods)
    if job.privacy.secure_aggregation:  # outermost: it masks the update the other mods leave (and clips for DP)
        names.insert(0, "secaggplus")
    elif job.privacy.clipping != "none" and job.privacy.side == "client":
        names.append("adaptiveclipping" if job.privacy.clipping == "adaptive" else "dpclipping")
    if job.client.compression != "none" and "compression" not in names:  # outermost: it encodes what is sent
        names.insert(0, "compression")
    chain = call_next
    for name in reversed(names):
        chain = _bind(MODS[name](job), chain)
    return chain(msg, context)


def _bind(mod: Mod, inner: ClientAppCallable) -> ClientAppCallable:
    return lambda msg, context: mod(msg, context, inner)
