"""Client-level differential privacy: Flower's DP wrappers and mods from the job, accounted with Opacus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import checkpoint_state, run_interrupted
from flwr.app import MessageType
from opacus.accountants import RDPAccountant

from ffm.config import ConfigError, load_job
from ffm.privacy import epsilon, noise_multiplier
from ffm.runtime import run_local


def _job(*keys: str):
    return load_job(None, ["federation.num_clients=10", "federation.rounds=20", *keys])


@pytest.mark.parametrize(("z", "fraction"), [(1.0, 1.0), (0.8, 0.3), (2.5, 0.5)])
def test_poisson_sampled_epsilon_agrees_with_opacus_accountant_stepped_round_by_round(z, fraction):
    job = _job("privacy.clipping=fixed", f"privacy.noise_multiplier={z}", f"federation.fraction_train={fraction}",
               "federation.sampling=poisson")
    accountant = RDPAccountant()  # a second implementation of the same Poisson analysis
    for _ in range(20):
        accountant.step(noise_multiplier=z, sample_rate=fraction)

    assert epsilon(job, 20) == pytest.approx(accountant.get_epsilon(1e-5), rel=5e-3)


def test_flowers_fixed_size_sampling_is_accounted_without_replacement_and_costs_more_than_poisson():
    keys = ("privacy.clipping=fixed", "privacy.noise_multiplier=0.8", "federation.fraction_train=0.3")
    fixed, poisson = epsilon(_job(*keys), 20), epsilon(_job(*keys, "federation.sampling=poisson"), 20)
    everyone = _job("privacy.clipping=fixed", "privacy.noise_multiplier=0.8")
    accountant = RDPAccountant()
    accountant.history = [(0.8, 1.0, 20)]

    assert fixed > 1.3 * poisson  # replace-one neighbours and no Poisson amplification: the honest, larger epsilon
    assert epsilon(everyone, 20) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-6)  # q = 1: no sampling


def test_epsilon_is_finite_and_falls_as_the_noise_multiplier_rises():
    values = [epsilon(_job("privacy.clipping=fixed", f"privacy.noise_multiplier={z}"), 20) for z in (0.5, 1, 2, 4)]

    assert all(v < float("inf") for v in values) and values == sorted(values, reverse=True)
    assert epsilon(_job("privacy.clipping=fixed", "privacy.noise_multiplier=0"), 20) == float("inf")


def test_a_target_epsilon_picks_the_noise_multiplier_that_reaches_it():
    job = _job("privacy.clipping=fixed", "privacy.target_epsilon=4")

    z = noise_multiplier(job)

    assert 1 < z < 10 and 3.9 < epsilon(job, 20) <= 4.0


def _gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon of a mu-GDP mechanism at ``delta`` (Dong, Roth and Su 2019), by bisection on
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    from scipy.stats import norm

    def delta_at(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * norm.cdf(-eps / mu - mu / 2)

    low, high = 0.0, 100.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if delta_at(middle) > delta else (low, middle)
    return high


def test_pld_accounts_unsampled_rounds_exactly_where_rdp_overstates_epsilon():
    keys = ("privacy.clipping=fixed", "privacy.noise_multiplier=3.0")  # every client every round: no sampling
    exact = _gaussian_epsilon(mu=20 ** 0.5 / 3.0, delta=1e-5)  # 20 Gaussian releases compose to sqrt(20)/z-GDP

    pld, rdp = epsilon(_job(*keys, "privacy.accountant=pld"), 20), epsilon(_job(*keys), 20)

    assert exact <= pld <= 1.01 * exact  # pessimistic discretization: an upper bound, and a tight one
    assert rdp > 1.05 * exact  # RDP's conversion to (epsilon, delta) is loose: 7.5 where the truth is 7.0


def test_pld_needs_less_noise_than_rdp_for_the_same_poisson_sampled_epsilon():
    keys = ("privacy.clipping=fixed", "privacy.target_epsilon=8", "federation.fraction_train=0.3",
            "federation.sampling=poisson")
    by_rdp, by_pld = _job(*keys), _job(*keys, "privacy.accountant=pld")

    assert noise_multiplier(by_pld) < 0.95 * noise_multiplier(by_rdp)
    assert 7.9 < epsilon(by_pld, 20) <= 8.0
    assert 8.0 < epsilon(_job(*keys, f"privacy.noise_multiplier={noise_multiplier(by_pld)}",
                              "privacy.target_epsilon=0"), 20)  # the same z, accounted by RDP: over the target


def test_pld_refuses_flowers_fixed_size_sampling_naming_the_fix():
    with pytest.raises(ConfigError, match=r"set federation\.sampling=poisson, or privacy\.accountant=rdp"):
        _job("privacy.clipping=fixed", "privacy.accountant=pld", "federation.fraction_train=0.3")


def test_a_target_epsilon_calibrates_adaptive_clipping_too_and_the_wrapper_gets_that_noise():
    from ffm.server import build_strategy

    job = _job("privacy.clipping=adaptive", "privacy.target_epsilon=4", "federation.sampling=poisson",
               "federation.fraction_train=0.5", "privacy.clipped_count_stddev=10")
    z = noise_multiplier(job)

    assert 3.9 < epsilon(job, 20) <= 4.0
    # Flower gives the update the part of z the clipped count (std 10) leaves: z_update^-2 = z^-2 - (2 x 10)^-2
    assert build_strategy(job).noise_multiplier == pytest.approx((z ** -2 - 20.0 ** -2) ** -0.5)


def test_adaptive_clipping_whose_count_noise_leaves_the_update_nothing_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"set privacy\.clipped_count_stddev above 0\.52"):
        _job("privacy.clipping=adaptive", "privacy.noise_multiplier=1.04")  # 10 clients a round: count std 0.5
    z = noise_multiplier(_job("privacy.clipping=fixed", "privacy.target_epsilon=4"))  # what epsilon 4 calibrates to
    with pytest.raises(ConfigError, match=rf"splits z = {z:.3g} .* above {z / 2:.3g}"):
        _job("privacy.clipping=adaptive", "privacy.target_epsilon=4")  # the calibrated z is judged the same way


def test_target_epsilon_without_clipping_and_dp_with_a_robust_rule_are_config_errors():
    with pytest.raises(ConfigError, match=r"set privacy\.clipping=fixed or adaptive"):
        load_job(None, ["privacy.target_epsilon=3"])
    with pytest.raises(ConfigError, match=r"use strategy.name=diloco or fedavg or fedavgm or fedprox, not 'krum'"):
        load_job(None, ["privacy.clipping=fixed", "strategy.name=krum"])


def _lines(job) -> list[dict]:
    return [json.loads(x) for x in Path(job.run_dir, "metrics.jsonl").read_text().splitlines()]


def test_client_side_dp_clips_every_update_on_the_node_and_logs_epsilon_each_round(job_factory, carried):
    job = job_factory(privacy__clipping="fixed", privacy__side="client", privacy__clipping_norm=0.05,
                      privacy__noise_multiplier=0.5, train__lr=0.05)

    summary, _ = run_local(job)

    for msg, reply in carried:
        if msg.metadata.message_type == MessageType.TRAIN:
            sent, got = msg.content["arrays"].to_torch_state_dict(), reply.content["arrays"].to_torch_state_dict()
            norm = float(torch.sqrt(sum(((got[k] - sent[k]).double() ** 2).sum() for k in sent)))
            assert norm <= 0.05 * (1 + 1e-5)
    eps = [line["epsilon"] for line in _lines(job)[1:]]
    assert len(eps) == 2 and 0 < eps[0] < eps[1] < float("inf")
    assert summary["privacy"]["epsilon"] == eps[-1] and summary["privacy"]["accountant"] == "opacus RDP"


def test_a_dp_run_with_noise_differs_from_the_same_run_without(job_factory):
    finals = {}
    for z in (0.0, 1.0):
        job = job_factory(f"z{z}", privacy__clipping="fixed", privacy__noise_multiplier=z, federation__rounds=1)
        run_local(job)
        finals[z] = checkpoint_state(job.run_dir, 1)

    assert any(not torch.equal(finals[0.0][k], finals[1.0][k]) for k in finals[0.0])
    assert all(torch.isfinite(v).all() for v in finals[1.0].values())


def test_an_adaptive_dp_run_resumed_mid_way_ends_bit_identical(job_factory, monkeypatch):
    overrides = {"privacy__clipping": "adaptive", "privacy__noise_multiplier": 0.05, "privacy__clipping_norm": 0.01,
                 "federation__rounds": 3, "train__lr": 0.05}
    run_local(straight := job_factory("straight", **overrides))
    broken = job_factory("broken", **overrides)
    run_interrupted(broken, monkeypatch, at_train_call=4)
    broken.resume = True

    run_local(broken)

    a, b = checkpoint_state(straight.run_dir, 3), checkpoint_state(broken.run_dir, 3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _lines(straight)[-1]["epsilon"] == _lines(broken)[-1]["epsilon"]
