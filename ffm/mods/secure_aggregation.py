"""Mod 'secaggplus': SecAgg+'s client stages (:mod:`ffm.secagg.mod`), switched on outermost by
``privacy.secure_aggregation=true`` (it masks the update the other mods leave, and clips it for DP)."""

from __future__ import annotations

from ffm.mods.spec import ModSpec, Place
from ffm.secagg import secagg_mod
from ffm.settings import Job

__all__ = ["SECURE_AGGREGATION_MOD"]


def _implied(job: Job) -> Place | None:
    return "outer" if job.privacy.secure_aggregation else None


SECURE_AGGREGATION_MOD = ModSpec(secagg_mod, implied=_implied, switched_on_by="privacy.secure_aggregation=true")
