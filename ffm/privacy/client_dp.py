"""Client-level differential privacy (DP-FedAvg, McMahan et al. 2018; adaptive clipping, Andrew et al. 2021).

The mechanism is Flower's: its DP strategy wrappers clip each update (server side) or have the clients clip
their own (client side, with Flower's ``fixedclipping_mod`` / ``adaptiveclipping_mod``, added to the node's
mods by the job), and add Gaussian noise of std ``z * C / n`` to the mean of the n sampled updates. For
adaptive clipping Flower splits z between the update and the clipped-count query (Andrew et al., Thm. 1), so
z stays the effective noise multiplier of the whole round.

What ffm adds: the accounting and the weights. Opacus's RDP accountant composes one sampled Gaussian
mechanism per round (noise multiplier z, sampling rate q = sampled clients / clients); epsilon at
``privacy.delta`` is logged after every round and in the summary, and ``privacy.target_epsilon`` picks z
before the run. Caveats, stated rather than hidden: (1) RDP amplification by sampling assumes Poisson
sampling, while Flower samples a fixed-size subset (exact when every client takes part, q = 1);
(2) the analysis needs equal weights, so a DP run averages updates uniformly ("dp-weight", not the example
count); (3) the noise comes from NumPy's generator, seeded per round so that a resume is bit-identical, which
makes it reproducible but not cryptographically secure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from ffm.federation import clients_per_round
from ffm.privacy.mechanism import Mechanism, masks_updates
from ffm.settings import CHECKS, Job, option, require
from ffm.strategies import STRATEGIES, strategy_spec

__all__ = ["CLIENT_DP", "DP_WEIGHT_KEY", "ClientDPConfig", "dp_strategy", "epsilon", "noise_multiplier",
           "sampled_clients"]

DP_WEIGHT_KEY = "dp-weight"  # every client reports 1: DP-FedAvg's uniform weights


@dataclass
class ClientDPConfig:
    """Client-level DP (DP-FedAvg): each update clipped, Gaussian noise on their sum, an accountant."""

    clipping: str = option("none", "client-level DP (DP-FedAvg): clipping of each update", choices=("none", "fixed",
                                                                                                   "adaptive"))
    side: str = option("server", "where updates are clipped: server (trusted server) or client (a Flower mod on "
                       "each node)", choices=("server", "client"))
    noise_multiplier: float = option(1.0, "z: Gaussian noise std on the sum of updates = z x clipping norm")
    clipping_norm: float = option(1.0, "L2 bound on each update (the initial bound for adaptive clipping)")
    target_epsilon: float = option(0.0, "> 0: choose z before the run so that epsilon after all rounds is this")
    delta: float = option(1e-5, "delta of the (epsilon, delta) guarantee")
    target_quantile: float = option(0.5, "adaptive: the share of updates the clipping norm should leave unclipped")
    clip_norm_lr: float = option(0.2, "adaptive: learning rate of the clipping norm (geometric update)")
    clipped_count_stddev: float = option(0.0, "adaptive: noise std on the count of clipped updates (0 = clients "
                                         "/ 20)")

    def __post_init__(self) -> None:
        require(self.noise_multiplier >= 0.0 and self.clipping_norm > 0.0, "privacy.noise_multiplier must be >= 0 "
                "and privacy.clipping_norm > 0")
        require(0.0 < self.delta < 1.0, f"privacy.delta must be in (0, 1), got {self.delta}")
        require(self.target_epsilon >= 0.0, "privacy.target_epsilon must be >= 0 (0 = use privacy.noise_multiplier)")
        require(self.target_epsilon == 0.0 or self.clipping == "fixed", "privacy.target_epsilon calibrates fixed "
                "clipping only: set privacy.clipping=fixed, or give privacy.noise_multiplier for adaptive clipping")


def sampled_clients(job: Job) -> int:
    """Clients whose updates each round's noise is spread over."""
    return clients_per_round(job.federation)


def _sample_rate(job: Job) -> float:
    return sampled_clients(job) / job.federation.num_clients


def noise_multiplier(job: Job) -> float:
    """z: the configured one, or the smallest that keeps epsilon after all rounds at privacy.target_epsilon."""
    dp = job.privacy
    if dp.target_epsilon <= 0.0:
        return dp.noise_multiplier
    return float(get_noise_multiplier(target_epsilon=dp.target_epsilon, target_delta=dp.delta,
                                      sample_rate=_sample_rate(job), steps=job.federation.rounds,
                                      accountant="rdp", epsilon_tolerance=0.001))


def epsilon(job: Job, rounds: int) -> float:
    """Epsilon at privacy.delta after ``rounds`` rounds (inf without noise)."""
    z = noise_multiplier(job)
    if z <= 0.0:
        return float("inf")
    if rounds <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(z, _sample_rate(job), rounds)]
    return float(accountant.get_epsilon(job.privacy.delta))


def dp_strategy(strategy: Strategy, job: Job) -> Strategy:
    """Wrap ``strategy`` in the Flower DP wrapper the job's privacy section names (uniform weights)."""
    dp = job.privacy
    strategy.weighted_by_key = DP_WEIGHT_KEY
    z, n = noise_multiplier(job), sampled_clients(job)
    if dp.clipping == "fixed":
        wrapper = (DifferentialPrivacyServerSideFixedClipping if dp.side == "server"
                   else DifferentialPrivacyClientSideFixedClipping)
        return wrapper(strategy, noise_multiplier=z, clipping_norm=dp.clipping_norm, num_sampled_clients=n)
    wrapper = (DifferentialPrivacyServerSideAdaptiveClipping if dp.side == "server"
               else DifferentialPrivacyClientSideAdaptiveClipping)
    return wrapper(strategy, noise_multiplier=z, num_sampled_clients=n, initial_clipping_norm=dp.clipping_norm,
                   target_clipped_quantile=dp.target_quantile, clip_norm_lr=dp.clip_norm_lr,
                   clipped_count_stddev=dp.clipped_count_stddev or None)


class ClientDP(Mechanism):
    """DP-FedAvg as a mechanism: Flower's DP wrapper around the rule (unless updates are masked: then the clients
    clip and add their share of the noise before masking), and equal weights in every reply."""

    config = ClientDPConfig

    def wrap(self, strategy: Strategy, job: Job) -> Strategy:
        if job.privacy.clipping == "none" or masks_updates(job):
            return strategy
        return dp_strategy(strategy, job)

    def needs_each_update(self, job: Job) -> bool:
        return job.privacy.clipping != "none" and job.privacy.side == "server"

    def reply_metrics(self, job: Job) -> dict[str, Any]:
        return {DP_WEIGHT_KEY: 1} if job.privacy.clipping != "none" else {}


CLIENT_DP = ClientDP()


def _plain_mean_rules() -> str:
    return " or ".join(name for name, spec in STRATEGIES.items() if spec.plain_mean)


def check_mean_for_noise(job: Job) -> None:
    """DP-FedAvg's noise is calibrated to a mean of clipped updates: the rule must be that mean."""
    require(job.privacy.clipping == "none" or strategy_spec(job).plain_mean,
            f"privacy.clipping (DP-FedAvg) needs a mean of the updates: use strategy.name={_plain_mean_rules()}, "
            f"not '{job.strategy.name}'")


CHECKS.register("client_dp_needs_a_mean", check_mean_for_noise)
