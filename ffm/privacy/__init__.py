"""Privacy mechanisms: each declares its keys of the ``privacy`` section and what it changes on the server.

Registered in :data:`PRIVACY` (in order; the first wraps the strategy innermost):

- ``client_dp``: client-level DP, DP-FedAvg with fixed or adaptive clipping (Flower's DP wrappers and mods);
- ``dp_sgd``: sample-level DP-SGD in each client's local training (Opacus);
- ``canaries``: canary clients for a one-run audit of client-level DP (no server half);
- ``secure_aggregation``: SecAgg+ (``ffm.secagg`` registers it), so the server learns only a sum.

The ServerApp asks the registry, never a mechanism by name: :func:`wrap_strategy` puts every active mechanism's
server half around the rule, :func:`masks_updates` and :func:`needs_each_update` say what the server can see.
"""

from __future__ import annotations

from dataclasses import dataclass

from ffm.privacy.canaries import CANARIES
from ffm.privacy.client_dp import CLIENT_DP, DP_WEIGHT_KEY, epsilon, noise_multiplier
from ffm.privacy.dp_sgd import DP_SGD
from ffm.privacy.mechanism import (
    PRIVACY,
    Mechanism,
    masks_updates,
    needs_each_update,
    reply_metrics,
    wrap_strategy,
    wraps_mean,
)
from ffm.settings import SECTIONS, Composite, SectionSpec

__all__ = [
    "DP_WEIGHT_KEY",
    "PRIVACY",
    "Mechanism",
    "PrivacyConfig",
    "epsilon",
    "masks_updates",
    "needs_each_update",
    "noise_multiplier",
    "reply_metrics",
    "wrap_strategy",
    "wraps_mean",
]


@dataclass
class PrivacyConfig:
    """What protects each party's data: the keys of every registered privacy mechanism (merged in)."""


PRIVACY.register("client_dp", CLIENT_DP)
PRIVACY.register("dp_sgd", DP_SGD)
PRIVACY.register("canaries", CANARIES)
SECTIONS.register("privacy", SectionSpec(Composite(PrivacyConfig, PRIVACY), position=20))
