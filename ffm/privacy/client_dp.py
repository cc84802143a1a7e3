"""Client-level differential privacy (DP-FedAvg, McMahan et al. 2018; adaptive clipping, Andrew et al. 2021).

The mechanism is Flower's: its DP strategy wrappers clip each update (server side) or have the clients clip
their own (client side, with Flower's ``fixedclipping_mod`` / ``adaptiveclipping_mod``, added to the node's
mods by the job), and add Gaussian noise of std ``z * C / n`` to the mean of the n sampled updates. For
adaptive clipping Flower splits z between the update and the clipped-count query (Andrew et al., Thm. 1), so
z stays the effective noise multiplier of the whole round.

What ffm adds: the accounting, the sampling it assumes, and the weights. Flower's RDP accountant composes one
sampled Gaussian release per round under the model that matches ``federation.sampling``
(:mod:`ffm.privacy.accounting`: Flower's fixed-size sampling is accounted as sampling without replacement,
replace-one; ``poisson`` samples each client independently, as the Poisson analysis assumes); epsilon at
``privacy.delta`` is logged after every round and in the summary, and ``privacy.target_epsilon`` picks z before
the run. With Poisson sampling the number of clients varies, so the noisy sum is divided by the *expected*
number (McMahan et al.'s fixed-denominator estimator, :class:`FixedDenominator`), which keeps the sensitivity
C / (qN) the noise is calibrated to. Server optimizers (FedAvgM, DiLoCo) step on the noised mean: the privacy
wrapper sits inside them, so their momentum never sees an un-noised update. Caveats, stated rather than hidden:
(1) the analysis needs equal weights, so a DP run averages updates uniformly ("dp-weight", not the example
count); (2) the noise comes from NumPy's generator, seeded per round so that a resume is bit-identical, which
makes it reproducible but not cryptographically secure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from ffm.federation import clients_per_round
from ffm.privacy.accounting import client_epsilon, noise_for_epsilon
from ffm.privacy.mechanism import Mechanism, masks_updates
from ffm.privacy.unchanged import UnchangedUpdates
from ffm.settings import CHECKS, Job, option, require
from ffm.strategies import STRATEGIES, strategy_spec
from ffm.strategies.wrapper import StrategyWrapper

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
    accountant: str = option("rdp", "how client-level DP's epsilon is accounted: rdp (Flower's RDP accountant) or "
                             "pld (privacy loss distributions: nearly exact, so the same epsilon needs less noise: "
                             "7% less at epsilon 8 over 30 rounds at q = 0.1; needs federation.sampling=poisson, "
                             "or every client each round)",
                             choices=("rdp", "pld"))
    clipped_count_stddev: float = option(0.0, "adaptive: noise std on the count of clipped updates (0 = clients "
                                         "/ 20)")

    def __post_init__(self) -> None:
        require(self.noise_multiplier >= 0.0 and self.clipping_norm > 0.0, "privacy.noise_multiplier must be >= 0 "
                "and privacy.clipping_norm > 0")
        require(0.0 < self.delta < 1.0, f"privacy.delta must be in (0, 1), got {self.delta}")
        require(self.target_epsilon >= 0.0, "privacy.target_epsilon must be >= 0 (0 = use privacy.noise_multiplier)")
        # adaptive clipping too: Flower splits z between the update and the clipped count, so z stays the whole
        # round's noise multiplier and the same calibration holds
        require(self.target_epsilon == 0.0 or self.clipping != "none", "privacy.target_epsilon calibrates the "
                "noise of client-level DP: set privacy.clipping=fixed or adaptive")


def sampled_clients(job: Job) -> int:
    """Clients whose updates each round's noise is spread over: the sample size, or with Poisson sampling the
    expected one (the fixed denominator)."""
    fed = job.federation
    if fed.sampling == "poisson":
        return max(1, round(fed.fraction_train * fed.num_clients))
    return clients_per_round(fed)


def noise_multiplier(job: Job) -> float:
    """z: the configured one, or the smallest that keeps epsilon after all rounds at privacy.target_epsilon."""
    dp = job.privacy
    if dp.target_epsilon <= 0.0:
        return dp.noise_multiplier
    return noise_for_epsilon(job, dp.target_epsilon, job.federation.rounds)


def epsilon(job: Job, rounds: int) -> float:
    """Epsilon at privacy.delta after ``rounds`` rounds (inf without noise)."""
    return client_epsilon(job, rounds, noise_multiplier(job))


def dp_strategy(strategy: Strategy, job: Job) -> Strategy:
    """Wrap ``strategy`` in the Flower DP wrapper the job's privacy section names (uniform weights)."""
    dp = job.privacy
    strategy.weighted_by_key = DP_WEIGHT_KEY
    z, n = noise_multiplier(job), sampled_clients(job)
    if job.federation.sampling == "poisson":  # the noise and the sum share the expected count as denominator
        strategy = FixedDenominator(strategy, expected=n)
    if dp.clipping == "fixed":
        wrapper = (ServerSideFixedClipping if dp.side == "server" else DifferentialPrivacyClientSideFixedClipping)
        return wrapper(strategy, noise_multiplier=z, clipping_norm=dp.clipping_norm, num_sampled_clients=n)
    wrapper = (ServerSideAdaptiveClipping if dp.side == "server" else DifferentialPrivacyClientSideAdaptiveClipping)
    return wrapper(strategy, noise_multiplier=z, num_sampled_clients=n, initial_clipping_norm=dp.clipping_norm,
                   target_clipped_quantile=dp.target_quantile, clip_norm_lr=dp.clip_norm_lr,
                   clipped_count_stddev=dp.clipped_count_stddev or None)


class ServerSideFixedClipping(UnchangedUpdates, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping, which also takes a client's unchanged model (ffm.privacy.unchanged)."""


class ServerSideAdaptiveClipping(UnchangedUpdates, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, which also takes a client's unchanged model (ffm.privacy.unchanged)."""


class FixedDenominator(StrategyWrapper):
    """The mean of n received updates rescaled to their sum over the expected count: start + sum / (qN).

    With Poisson sampling n varies; dividing by the expected count instead keeps each client's influence, and
    so the sensitivity the noise (z C / (qN), added by Flower's DP wrapper around this) is calibrated to, fixed.
    """

    def __init__(self, inner: Strategy, *, expected: int) -> None:
        super().__init__(inner)
        self.expected = expected
        self._start: dict = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self._start = {k: a.numpy() for k, a in arrays.items()}
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        received = sum(1 for r in replies if not r.has_error())
        if arrays is None or not received:
            return arrays, metrics
        scale = received / self.expected
        return ArrayRecord({k: Array((self._start[k] + (a.numpy() - self._start[k]) * scale).astype(a.numpy().dtype))
                            for k, a in arrays.items()}), metrics


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
    return " or ".join(name for name, spec in STRATEGIES.items() if spec.plain_mean or spec.outer_on_mean)


def check_mean_for_noise(job: Job) -> None:
    """DP-FedAvg's noise is calibrated to a mean of clipped updates: the rule must be that mean, or a server
    optimizer stepping on it."""
    spec = strategy_spec(job)
    require(job.privacy.clipping == "none" or spec.plain_mean or spec.outer_on_mean,
            f"privacy.clipping (DP-FedAvg) needs a mean of the updates: use strategy.name={_plain_mean_rules()}, "
            f"not '{job.strategy.name}'")


def check_pld_sampling(job: Job) -> None:
    """PLD accounts Poisson sampling or rounds of every client; Flower's fixed-size sampler has no PLD event."""
    fed = job.federation
    require(job.privacy.clipping == "none" or job.privacy.accountant == "rdp" or fed.sampling == "poisson"
            or clients_per_round(fed) >= fed.num_clients,
            f"privacy.accountant=pld accounts Poisson sampling or every client each round, and federation.sampling="
            f"{fed.sampling} draws {clients_per_round(fed)} of {fed.num_clients} without replacement: set "
            "federation.sampling=poisson, or privacy.accountant=rdp")


def check_adaptive_noise_split(job: Job) -> None:
    """Adaptive clipping spends part of z on the clipped count (std sigma_b): z must stay below 2 sigma_b, or
    nothing is left for the update (Flower would refuse it only when the strategy is built)."""
    dp = job.privacy
    if dp.clipping != "adaptive":
        return
    count_std = dp.clipped_count_stddev or sampled_clients(job) / 20  # Flower's default
    if dp.target_epsilon > 0.0:
        # epsilon falls as z rises, so the calibrated z fits iff a z just under the limit already reaches the
        # target: one accounting here (every process that builds the job runs this check), not a calibration
        if client_epsilon(job, job.federation.rounds, 0.998 * 2 * count_std) <= dp.target_epsilon:
            return
    elif dp.noise_multiplier < 2 * count_std:
        return
    z = noise_multiplier(job)  # the one to name in the error
    require(z < 2 * count_std,
            f"privacy.clipping=adaptive splits z = {z:.3g} between the update and the count of clipped updates, "
            f"whose noise std ({count_std:g}{'' if dp.clipped_count_stddev else ': clients per round / 20'}) must "
            f"be above z / 2: set privacy.clipped_count_stddev above {z / 2:.3g}, or sample more clients per round")


CHECKS.register("client_dp_needs_a_mean", check_mean_for_noise)
CHECKS.register("adaptive_clipping_leaves_noise_for_the_update", check_adaptive_noise_split)
CHECKS.register("pld_accounts_poisson_sampling", check_pld_sampling)
