"""The plug-in promise: a new strategy, client mod or method is one file plus one registry line, with no edit
anywhere in ffm. The toy plug-ins live in ``tests/toy_plugins`` and are registered only for these tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ffm.config import describe_keys, job_to_run_config
from ffm.errors import ConfigError
from ffm.runtime import run_local
from ffm.workspace import workspace_for

pytestmark = pytest.mark.xdist_group("toy_plugins")  # the registries are per process: keep these together


@pytest.fixture
def toys():
    import toy_plugins

    toy_plugins.register()
    yield
    toy_plugins.unregister()


def _state(run_dir: str, server_round: int) -> dict[str, torch.Tensor]:
    path = Path(run_dir) / "checkpoints" / f"round-{server_round:06d}.pt"
    return torch.load(path, weights_only=True)["state"]


def test_a_toy_strategy_runs_with_its_own_key_and_takes_its_share_of_fedavgs_step(toys, job_factory):
    fedavg = job_factory("fedavg", federation__rounds=1)
    damped = job_factory("damped", federation__rounds=1, strategy__name="toy_damped", strategy__toy_damping=0.25)
    run_local(fedavg)
    run_local(damped)

    start, mean, got = workspace_for(damped).initial_state, _state(fedavg.run_dir, 1), _state(damped.run_dir, 1)
    assert all(torch.allclose(got[k], start[k] + 0.25 * (mean[k] - start[k]), atol=1e-6) for k in got)
    assert any(key == "strategy.toy_damping" for key, *_ in describe_keys())
    with pytest.raises(ConfigError, match="toy_damping"):
        job_factory(strategy__name="toy_damped", strategy__toy_damping=2.0)


def test_a_toy_mod_runs_around_every_client_with_its_own_key(toys, job_factory):
    job = job_factory("counted", client__mods=["toy_counter"], client__toy_counter_start=7)

    run_local(job)

    lines = [json.loads(x) for x in (Path(job.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(c["toy_count"] for c in line["clients"]) for line in lines[1:]] == [[8, 8, 8], [9, 9, 9]]
    assert job_to_run_config(job)["client.toy_counter_start"] == 7


def test_a_toy_method_trains_and_sends_only_what_it_chooses(toys, job_factory):
    job = job_factory("head", method__name="toy_head_only", method__toy_part="classifier")

    summary, _ = run_local(job)

    state = _state(job.run_dir, 2)
    assert sorted(state) == ["classifier.bias", "classifier.weight"]
    assert summary["trainable_params"] == sum(t.numel() for t in state.values())


def test_without_registration_the_toy_names_are_unknown(job_factory):
    with pytest.raises(ConfigError, match=r"strategy\.name: 'toy_damped' is not one of"):
        job_factory(strategy__name="toy_damped")
