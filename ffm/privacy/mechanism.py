"""The privacy-mechanism seam: a mechanism's keys, its server half and what it tells the rest of ffm."""

from __future__ import annotations

from typing import Any, ClassVar

from flwr.serverapp.strategy import Strategy

from ffm.registry import Registry
from ffm.settings import Job

__all__ = ["PRIVACY", "Mechanism", "masks_updates", "needs_each_update", "reply_metrics", "wrap_strategy",
           "wraps_mean"]


class Mechanism:
    """One privacy mechanism. ``config``: its keys in the ``privacy`` section (a dataclass beside its code)."""

    config: ClassVar[type | None] = None

    def wrap(self, strategy: Strategy, job: Job) -> Strategy:
        """The mechanism's server half around ``strategy`` when the job switches it on (else ``strategy``)."""
        return strategy

    def masks_updates(self, job: Job) -> str | None:
        """When on and the server sees only a sum of the updates: the key that says so (for error messages)."""
        return None

    def needs_each_update(self, job: Job) -> bool:
        """Whether its server half reads every update apart (then no streaming aggregation)."""
        return False

    def reply_metrics(self, job: Job) -> dict[str, Any]:
        """Metrics every client adds to its replies for this mechanism."""
        return {}


PRIVACY: Registry[Mechanism] = Registry("privacy mechanism", ordered=True)
"""Privacy mechanisms, in the order their server halves wrap the strategy (first = innermost)."""


def wrap_strategy(strategy: Strategy, job: Job) -> Strategy:
    """``strategy`` inside the server half of every active mechanism (in registration order)."""
    for _, mechanism in PRIVACY.items():
        strategy = mechanism.wrap(strategy, job)
    return strategy


def wraps_mean(job: Job) -> bool:
    """Whether an active mechanism's server half wraps the aggregate (noise, masks): a server optimizer must then
    step on what it releases, not wrap it."""
    from flwr.serverapp.strategy import FedAvg

    probe = FedAvg()
    return any(m.wrap(probe, job) is not probe for _, m in PRIVACY.items())


def masks_updates(job: Job) -> str | None:
    """The key that hides each update from the server behind a sum (e.g. secure aggregation), or None."""
    return next((m.masks_updates(job) for _, m in PRIVACY.items() if m.masks_updates(job)), None)


def needs_each_update(job: Job) -> bool:
    """Whether an active mechanism's server half reads every update (server-side clipping: no streaming)."""
    return any(m.needs_each_update(job) for _, m in PRIVACY.items())


def reply_metrics(job: Job) -> dict[str, Any]:
    """What every active mechanism adds to a client's train and evaluate metrics (DP-FedAvg's equal weights)."""
    out: dict[str, Any] = {}
    for _, mechanism in PRIVACY.items():
        out.update(mechanism.reply_metrics(job))
    return out
