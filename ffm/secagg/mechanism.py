"""Secure aggregation as a privacy mechanism: its keys of the ``privacy`` section, its server half (the
:class:`~ffm.secagg.strategy.SecAggPlus` wrapper) and the rules it sets for the rest of the job."""

from __future__ import annotations

from dataclasses import dataclass

from flwr.serverapp.strategy import Strategy

from ffm.federation import clients_per_round
from ffm.methods import build_method
from ffm.privacy import Mechanism
from ffm.secagg.strategy import SecAggPlus
from ffm.settings import CHECKS, Job, option, require
from ffm.strategies import STRATEGIES, strategy_spec

__all__ = ["SECURE_AGGREGATION", "SecAggConfig"]


@dataclass
class SecAggConfig:
    """SecAgg+ (Bell et al. 2020): the server learns only the weighted sum of the sampled clients' updates."""

    secure_aggregation: bool = option(
        False, "SecAgg+: the server learns only the weighted sum of the updates (needs a plain-mean strategy; "
        "composes with clipping=fixed side=client, whose noise is then added by the clients before masking)")
    secagg_threshold: float = option(0.7, "secure_aggregation: share of a client's neighbours whose shares rebuild "
                                     "its secrets (up to 1 - this of them may drop out)")
    secagg_neighbours: int = option(0, "secure_aggregation: neighbours per client in SecAgg+'s graph (0 = all "
                                    "others)")
    secagg_bound: float = option(0.5, "secure_aggregation: each coordinate of an update is clipped to +-this")
    secagg_bits: int = option(20, "secure_aggregation: quantization steps per bound (2^bits), in a 64-bit ring")
    secagg_max_norm: float = option(0.0, "secure_aggregation: a client refuses to send an update whose L2 norm is "
                                    "above this (0 = no check; NaN/inf are always refused)")

    def __post_init__(self) -> None:
        if self.secure_aggregation:
            require(0.0 < self.secagg_threshold <= 1.0 and self.secagg_bound > 0 and 8 <= self.secagg_bits <= 30,
                    "privacy.secagg_threshold must be in (0, 1], secagg_bound > 0 and secagg_bits in [8, 30]")


class SecureAggregation(Mechanism):
    """The SecAgg+ wrapper around the rule; the clients' half is the ``secaggplus`` mod, switched on with it."""

    config = SecAggConfig

    def wrap(self, strategy: Strategy, job: Job) -> Strategy:
        return SecAggPlus(strategy, job) if job.privacy.secure_aggregation else strategy

    def masks_updates(self, job: Job) -> str | None:
        return "privacy.secure_aggregation=true" if job.privacy.secure_aggregation else None

    def needs_each_update(self, job: Job) -> bool:
        return job.privacy.secure_aggregation  # its own message flow: no streaming through the guard


SECURE_AGGREGATION = SecureAggregation()


def check_secure_aggregation(job: Job) -> None:
    """The server gets a sum: rules that need each update, server-side DP and lone clients cannot use it."""
    if not job.privacy.secure_aggregation:
        return
    dp = job.privacy
    require(job.mode.aggregates, f"privacy.secure_aggregation needs mode=federated (not {job.mode})")
    require(strategy_spec(job).plain_mean,
            f"privacy.secure_aggregation: the server sees only the sum of the updates, so strategy.name="
            f"{job.strategy.name} (which needs each update, or its own state) cannot run on it; use "
            f"{' or '.join(n for n, s in STRATEGIES.items() if s.plain_mean)}")
    require(dp.clipping == "none" or (dp.clipping == "fixed" and dp.side == "client"),
            "privacy.secure_aggregation with client-level DP needs privacy.clipping=fixed privacy.side=client (the "
            "clients clip and add their share of the noise before masking)")
    require(not build_method(job.method).needs_each_update,
            f"privacy.secure_aggregation sums updates: method.name={job.method.name} with these keys aggregates "
            "each update its own way (method.aggregation=exact or method.client_ranks); use plain averaging")
    per_round = clients_per_round(job.federation)
    require(per_round >= 2, f"privacy.secure_aggregation needs at least 2 clients per round (the sum of one update "
            f"is that update); federation.num_clients={job.federation.num_clients} with fraction_train="
            f"{job.federation.fraction_train} gives {per_round}")


CHECKS.register("secure_aggregation_gets_a_sum", check_secure_aggregation)
