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

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from ffm.config import JobConfig

__all__ = ["DP_WEIGHT_KEY", "dp_strategy", "epsilon", "noise_multiplier", "sampled_clients"]

DP_WEIGHT_KEY = "dp-weight"  # every client reports 1: DP-FedAvg's uniform weights


def sampled_clients(job: JobConfig) -> int:
    return max(1, int(job.federation.num_clients * job.federation.fraction_train))


def _sample_rate(job: JobConfig) -> float:
    return sampled_clients(job) / job.federation.num_clients


def noise_multiplier(job: JobConfig) -> float:
    """z: the configured one, or the smallest that keeps epsilon after all rounds at privacy.target_epsilon."""
    dp = job.privacy
    if dp.target_epsilon <= 0.0:
        return dp.noise_multiplier
    return float(get_noise_multiplier(target_epsilon=dp.target_epsilon, target_delta=dp.delta,
                                      sample_rate=_sample_rate(job), steps=job.federation.rounds,
                                      accountant="rdp", epsilon_tolerance=0.001))


def epsilon(job: JobConfig, rounds: int) -> float:
    """Epsilon at privacy.delta after ``rounds`` rounds (inf without noise)."""
    z = noise_multiplier(job)
    if z <= 0.0:
        return float("inf")
    if rounds <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(z, _sample_rate(job), rounds)]
    return float(accountant.get_epsilon(job.privacy.delta))


def dp_strategy(strategy: Strategy, job: JobConfig) -> Strategy:
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
