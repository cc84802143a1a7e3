"""Client-level privacy accounting that matches how clients are actually sampled (Flower's RDP accountant, or PLD).

The amplification a round's sampling buys depends on the sampling, and so does the neighbouring relation the
guarantee is stated for. Flower's accountant (``flwr.supercore.privacy_accounting``, RDP through Google's
``dp-accounting``) composes one sampled Gaussian release per round under the model that matches
``federation.sampling``:

- ``fixed`` (Flower's own sampler: a fixed-size subset each round, without replacement): amplification by
  sampling without replacement, for neighbouring federations that differ in one client's data (replace-one).
  When every client takes part (fraction 1) there is no sampling: no amplification, add-or-remove-one.
- ``poisson`` (ffm's sampler, :mod:`ffm.strategies.poisson`: each client independently with probability q, a
  variable number per round): Poisson amplification, add-or-remove-one, the model of Abadi et al. and of
  McMahan et al.'s DP-FedAvg.

Before this module ffm reported Poisson epsilons for Flower's fixed-size sampling: smaller than the guarantee
that sampler gives. Noise calibration to a target epsilon searches the noise multiplier under the same model.

``privacy.accountant=pld`` accounts the same releases with privacy loss distributions (``dp_accounting.pld``,
pessimistic discretization, so still an upper bound): RDP's conversion to (epsilon, delta) is loose, PLD's is
nearly exact, so the same epsilon needs less noise (epsilon 8 over 30 rounds at q = 0.1, delta 1e-5: z 0.73
against RDP's 0.78). Flower wraps only RDP, and dp_accounting's PLD has no event for sampling without replacement,
so PLD accounts Poisson sampling and rounds without sampling (every client), and refuses Flower's fixed-size
sampler.
"""

from __future__ import annotations

import functools
import logging
import math

from ffm.settings import Job

__all__ = ["client_epsilon", "noise_for_epsilon"]


def _model(job: Job) -> tuple[object, object, int, int]:
    """(sampling method, neighbouring relation, sample size, population) of a round of ``job``."""
    from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod

    from ffm.federation import clients_per_round

    fed = job.federation
    population = fed.num_clients
    if fed.sampling == "poisson":
        size = max(1, round(fed.fraction_train * population))
        return SamplingMethod.POISSON, NeighboringRelation.ADD_OR_REMOVE_ONE, size, population
    size = clients_per_round(fed)
    if size >= population:
        return SamplingMethod.NO_AMPLIFICATION, NeighboringRelation.ADD_OR_REMOVE_ONE, size, population
    return SamplingMethod.WITHOUT_REPLACEMENT, NeighboringRelation.REPLACE_ONE, size, population


def client_epsilon(job: Job, rounds: int, noise_multiplier: float) -> float:
    """Epsilon at ``privacy.delta`` after ``rounds`` releases with noise multiplier ``noise_multiplier``."""
    if noise_multiplier <= 0.0:
        return float("inf")
    if rounds <= 0:
        return 0.0
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent, PrivacyConfig
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting warns for orders it leaves out
    sampling, relation, size, population = _model(job)
    if job.privacy.accountant == "pld":
        return _pld_epsilon(sampling.name, size / population, rounds, noise_multiplier, job.privacy.delta)
    accountant = RdpAccountant(PrivacyConfig(target_delta=job.privacy.delta, population_size=population,
                                             neighboring_relation=relation, sampling_method=sampling))
    accountant.compose(GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=size,
                                            population_size=population), count=rounds)
    return float(accountant.get_epsilon(job.privacy.delta))


@functools.lru_cache(maxsize=4096)  # a run asks once a round, a calibration a few dozen times: ~1 s each
def _pld_epsilon(sampling: str, rate: float, rounds: int, noise_multiplier: float, delta: float) -> float:
    """Epsilon of ``rounds`` Gaussian releases, Poisson-sampled at ``rate`` or not sampled, by PLD."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling == "POISSON":
        event = dp_accounting.PoissonSampledDpEvent(rate, event)
    elif sampling != "NO_AMPLIFICATION":
        raise ValueError("privacy.accountant=pld accounts Poisson sampling or every client each round, not "
                         "Flower's fixed-size sampling: set federation.sampling=poisson or privacy.accountant=rdp")
    accountant = PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(job: Job, target: float, rounds: int) -> float:
    """The smallest noise multiplier whose epsilon after ``rounds`` rounds is at most ``target`` (to 0.1%)."""
    low, high = 0.0, 1.0
    while client_epsilon(job, rounds, high) > target:
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"no noise multiplier reaches epsilon {target} in {rounds} rounds")
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if client_epsilon(job, rounds, middle) > target else (low, middle)
    return high if not math.isnan(high) else float("nan")
