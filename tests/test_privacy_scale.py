"""Client-level DP as deployed at scale: Poisson client sampling that matches the accountant, the fixed
denominator it needs, and server optimizers that step on the noised mean."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from ffm.config import load_job
from ffm.flwr_internals import set_task_identity
from ffm.privacy.client_dp import FixedDenominator, dp_strategy
from ffm.runtime import run_local
from ffm.server import build_strategy
from ffm.strategies.outer import OuterSGD
from ffm.strategies.poisson import PoissonSampling, poisson_draw


def test_the_poisson_sampler_draws_each_client_independently_with_probability_q():
    nodes, q, rounds = list(range(1, 51)), 0.2, 3000
    draws = [poisson_draw(nodes, q, seed=7, server_round=r) for r in range(1, rounds + 1)]
    counts = [len(d) for d in draws]
    inclusion = {n: sum(n in d for d in draws) / rounds for n in nodes}

    assert statistics.mean(counts) == pytest.approx(50 * q, rel=0.03)
    assert statistics.pvariance(counts) == pytest.approx(50 * q * (1 - q), rel=0.15)  # Binomial(N, q): it varies
    assert max(abs(f - q) for f in inclusion.values()) < 0.03
    assert poisson_draw(nodes, q, seed=7, server_round=5) == draws[4]  # a round's draw depends on it alone


def test_a_poisson_sampled_run_trains_exactly_the_drawn_clients_each_round(job_factory):
    job = job_factory(federation__num_clients=6, federation__rounds=4, federation__sampling="poisson",
                      federation__fraction_train=0.5)

    run_local(job)

    lines = [json.loads(x) for x in Path(job.run_dir, "metrics.jsonl").read_text().splitlines()][1:]
    for line in lines:
        drawn = poisson_draw(range(1, 7), 0.5, seed=job.seed, server_round=line["round"])
        assert sorted(c["node"] for c in line.get("clients", [])) == drawn
    assert len({len(line.get("clients", [])) for line in lines}) > 1  # a variable number per round


def _reply(node: int, value: float) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.full(3, value, dtype=np.float32))}),
                          "metrics": MetricRecord({"num-examples": 1})})
    msg = Message(content, dst_node_id=node, message_type="train")
    return Message(content, reply_to=msg)


def test_the_fixed_denominator_divides_the_sum_of_updates_by_the_expected_count(server_identity):
    inner = FedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1)
    strategy = FixedDenominator(inner, expected=4)
    start = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})

    list(strategy.configure_train(1, start, ConfigRecord({}), _Grid()))
    arrays, _ = strategy.aggregate_train(1, [_reply(1, 1.0), _reply(2, 2.0), _reply(3, 3.0)])

    assert np.allclose(arrays["w"].numpy(), (1.0 + 2.0 + 3.0) / 4)  # sum / (q N), not the mean of the three


@pytest.fixture
def server_identity():
    """Flower stamps the ServerApp's identity into every Message it builds (the LocalGrid or a SuperLink sets it)."""
    set_task_identity(1)


class _Grid:
    def get_node_ids(self):
        return [1, 2, 3]

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_server_side_clipping_takes_a_client_that_returns_the_model_unchanged(clipping, server_identity):
    # Flower's clipping divides by the update's norm: an unchanged model (every local gradient underflowed to
    # zero) killed the ServerApp with ZeroDivisionError in a DP run at 1,000 clients.
    job = load_job(None, [f"privacy.clipping={clipping}", "privacy.noise_multiplier=0", "privacy.clipping_norm=1.0",
                          "federation.num_clients=2", "federation.fraction_train=1.0"])
    strategy = dp_strategy(FedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1), job)
    start = ArrayRecord({"w": Array(np.full(3, 0.5, dtype=np.float32))})
    list(strategy.configure_train(1, start, ConfigRecord({}), _Grid()))
    replies = [_reply(1, 0.5), _reply(2, 4.5)]  # node 1 sends the model back
    for reply in replies:
        reply.content["metrics"]["dp-weight"] = 1

    arrays, _ = strategy.aggregate_train(1, replies)

    clipped = 0.5 + 1.0 / np.sqrt(3)  # node 2's update (4 in each of 3 coordinates) clipped to norm 1
    assert np.allclose(arrays["w"].numpy(), (0.5 + clipped) / 2, atol=1e-6)  # the unchanged model counts as zero


@pytest.mark.parametrize("mod", ["dp-fixed", "dp-adaptive", "fixedclipping"])
def test_client_side_clipping_takes_a_reply_whose_model_is_unchanged(mod, server_identity):
    # Flower's fixedclipping_mod / adaptiveclipping_mod divide by the update's norm too: without the guard an
    # unchanged model raised ZeroDivisionError in the node and the round lost an honest reply.
    from ffm.mods.clipping import FIXED_CLIPPING
    from ffm.mods.dp_clipping import ADAPTIVE_DP_CLIPPING, FIXED_DP_CLIPPING

    spec = {"dp-fixed": FIXED_DP_CLIPPING, "dp-adaptive": ADAPTIVE_DP_CLIPPING, "fixedclipping": FIXED_CLIPPING}[mod]
    start = np.full(3, 0.5, dtype=np.float32)
    content = RecordDict({"arrays": ArrayRecord({"w": Array(start.copy())}),
                          "config": ConfigRecord({"clipping_norm": 1.0})})
    train = Message(content, dst_node_id=1, message_type="train")

    def sends_back_what_it_got(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=msg)

    reply = spec.build(load_job(None, []))(train, Context(1, 1, {}, RecordDict(), {}), sends_back_what_it_got)

    assert not reply.has_error()
    sent = reply.content["arrays"]["w"].numpy()
    assert np.abs(sent - start).max() <= np.spacing(np.float32(0.5))  # at most one ulp off the model it got
    if mod == "dp-adaptive":
        assert reply.content["metrics"]["norm_bit"] == 0  # Flower's bit says "clipped": a zero update was not


@pytest.mark.parametrize("rule", ["diloco", "fedavgm"])
def test_a_server_optimizer_under_dp_steps_on_the_noised_mean(rule):
    job = load_job(None, ["privacy.clipping=fixed", f"strategy.name={rule}", "federation.sampling=poisson",
                          "federation.fraction_train=0.5"])

    strategy = build_strategy(job)

    assert isinstance(strategy, PoissonSampling) and isinstance(strategy.inner, OuterSGD)
    noised = strategy.inner.inner
    assert isinstance(noised, DifferentialPrivacyServerSideFixedClipping)  # the momentum sees only its output
    assert isinstance(noised.strategy, FixedDenominator) and noised.num_sampled_clients == 5


def test_a_dp_run_with_diloco_and_poisson_sampling_logs_the_poisson_epsilon(job_factory):
    from ffm.privacy import epsilon

    job = job_factory(federation__num_clients=6, federation__rounds=3, federation__sampling="poisson",
                      federation__fraction_train=0.5, privacy__clipping="fixed", privacy__noise_multiplier=1.0,
                      strategy__name="diloco")

    summary, _ = run_local(job)

    assert summary["privacy"]["epsilon"] == pytest.approx(epsilon(job, 3))


# --- the one-run audit with canaries -------------------------------------------------------------------------


def test_the_audit_bound_is_zero_for_chance_guesses_and_grows_with_correct_ones():
    from ffm.privacy.canaries import audit_epsilon

    chance = audit_epsilon(1000, 500, 250, 1e-5)
    good = audit_epsilon(1000, 500, 450, 1e-5)
    perfect = audit_epsilon(1000, 500, 500, 1e-5)

    assert chance == 0.0 and 1.5 < good < perfect


def _canary_job(job_factory, name: str, **overrides):
    return job_factory(name, federation__num_clients=6, federation__rounds=3, privacy__canaries=64,
                       privacy__clipping="fixed", privacy__clipping_norm=1.0, federation__fraction_evaluate=0.0,
                       **overrides)


def test_without_noise_the_canary_audit_finds_a_clearly_positive_lower_bound(job_factory):
    from ffm.audit import canary_audit_run

    job = _canary_job(job_factory, "open", privacy__noise_multiplier=0.0)
    run_local(job)

    found = canary_audit_run(job.run_dir)

    assert found["correct"] == found["guesses"] == 32 and found["epsilon_lower_bound"] > 1.0
    assert found["score_present_mean"] > 10 * abs(found["score_absent_mean"])


def test_without_dp_a_canary_claiming_more_examples_weighs_more_in_the_mean(job_factory):
    """Without DP the mean is weighted by examples: a canary's weight is what it claims (privacy.canary_examples)."""
    from ffm.audit import canary_audit_run

    moved = {}
    for claimed in (1, 4):
        job = job_factory(f"claims{claimed}", federation__num_clients=6, federation__rounds=2, privacy__canaries=16,
                          privacy__canary_examples=claimed, federation__fraction_evaluate=0.0,
                          checkpoint__keep_last=0)
        run_local(job)
        found = canary_audit_run(job.run_dir)
        moved[claimed] = found["score_present_mean"] - found["score_absent_mean"]

    assert moved[4] > 2 * moved[1] > 0


def test_with_noise_the_canary_audit_stays_below_the_accountants_epsilon(job_factory):
    from ffm.audit import canary_audit_run

    job = _canary_job(job_factory, "noised", privacy__noise_multiplier=1.0)
    run_local(job)

    found = canary_audit_run(job.run_dir)

    assert found["epsilon_lower_bound"] <= found["epsilon_accountant"]
    summary = json.loads(Path(job.run_dir, "summary.json").read_text())
    assert summary["canary_audit"]["canaries"] == 64
