"""Sample-level DP-SGD through Opacus in local training: private, accounted, and contained to one client."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant

from ffm.config import ConfigError
from ffm.privacy.dp_sgd import dp_sgd_epsilon, dp_sgd_session
from ffm.runtime import run_local
from ffm.workspace import workspace_for


def _epsilons(summary_run_dir: str) -> list[list[float]]:
    import json
    from pathlib import Path

    lines = [json.loads(x) for x in (Path(summary_run_dir) / "metrics.jsonl").read_text().splitlines() if x]
    return [[c["dp_sgd_epsilon"] for c in m["clients"]] for m in lines if m["round"] > 0]


def test_dp_sgd_federates_and_each_clients_epsilon_grows_by_round(job_factory):
    job = job_factory(privacy__dp_sgd=True, privacy__sgd_noise_multiplier=1.0, train__local_steps=3)
    summary, _ = run_local(job)
    per_round = _epsilons(job.run_dir)
    assert len(per_round) == 2 and all(0 < e < float("inf") for e in per_round[0])
    assert min(per_round[1]) > max(per_round[0]) * 0.99  # more steps spend more (same sample rates)
    assert summary["dp_sgd"]["epsilon_max"] == pytest.approx(max(per_round[1]))


def test_a_clients_epsilon_matches_opacuss_accountant_computed_on_its_own():
    accountant = RDPAccountant()
    for _ in range(6):
        accountant.step(noise_multiplier=1.1, sample_rate=0.25)
    assert dp_sgd_epsilon(6, 0.25, 1.1, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5))
    assert dp_sgd_epsilon(6, 0.25, 2.2, 1e-5) < dp_sgd_epsilon(6, 0.25, 1.1, 1e-5)


def test_noise_changes_the_update_and_the_session_leaves_no_opacus_state_on_the_shared_model(job_factory):
    job = job_factory(privacy__dp_sgd=True)
    ws = workspace_for(job)
    model = ws.model
    hooks_before = sum(len(m._forward_hooks) + len(m._backward_hooks) + len(getattr(m, "_forward_pre_hooks", {}))
                       for m in model.modules())
    data = ws.examples("train", 0)
    batch = {k: v[:8] for k, v in data.tensors.items()}
    ends = []
    for z in (1e-6, 5.0):
        ws.load(ws.initial_state)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        with dp_sgd_session(model, optimizer, noise_multiplier=z, clip=1.0, expected_batch_size=8, seed=0) as (m, o):
            m.train()  # Opacus records activations in training mode only
            ws.task.loss(m, batch).backward()
            o.step()
        ends.append({k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad})
    assert any(not torch.allclose(ends[0][k], ends[1][k]) for k in ends[0])
    hooks_after = sum(len(m._forward_hooks) + len(m._backward_hooks) + len(getattr(m, "_forward_pre_hooks", {}))
                      for m in model.modules())
    assert hooks_after == hooks_before
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["ia3", "full", "prompt_tuning", "p_tuning"])
def test_a_method_opacus_cannot_differentiate_per_example_is_a_clear_error_before_the_run(job_factory, method):
    with pytest.raises(ConfigError, match=r"supports method\.name=bitfit or lora"):
        job_factory(privacy__dp_sgd=True, method__name=method)


def test_bitfit_trains_privately_too(job_factory):
    summary, _ = run_local(job_factory(privacy__dp_sgd=True, method__name="bitfit", federation__rounds=1))
    assert summary["rounds"] == 1 and not summary["failed_rounds"] and summary["dp_sgd"]["epsilon_max"] > 0


def test_dp_sgd_refuses_strategies_whose_client_correction_it_would_drop(job_factory):
    with pytest.raises(ConfigError, match="fedprox"):
        job_factory(privacy__dp_sgd=True, strategy__name="fedprox")
