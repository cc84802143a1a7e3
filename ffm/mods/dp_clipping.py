"""Client-side DP clipping: Flower's own ``fixedclipping_mod`` / ``adaptiveclipping_mod``, switched on innermost
by ``privacy.clipping=fixed|adaptive privacy.side=client`` (the server's Flower DP wrapper sends the bound); both
take a reply whose model is unchanged (:mod:`ffm.privacy.unchanged`)."""

from __future__ import annotations

from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

from ffm.mods.spec import ModSpec, Place
from ffm.privacy import masks_updates
from ffm.privacy.unchanged import takes_unchanged
from ffm.settings import Job

__all__ = ["ADAPTIVE_DP_CLIPPING", "FIXED_DP_CLIPPING"]


def _when(kind: str):
    def implied(job: Job) -> Place | None:
        dp = job.privacy
        clips_here = dp.clipping == kind and dp.side == "client" and not masks_updates(job)
        return "inner" if clips_here else None  # the update is clipped right after training

    return implied


FIXED_DP_CLIPPING = ModSpec(lambda job: takes_unchanged(fixedclipping_mod), implied=_when("fixed"),
                            switched_on_by="privacy.clipping=fixed privacy.side=client")
ADAPTIVE_DP_CLIPPING = ModSpec(lambda job: takes_unchanged(adaptiveclipping_mod), implied=_when("adaptive"),
                               switched_on_by="privacy.clipping=adaptive privacy.side=client")
