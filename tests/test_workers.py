"""The LocalGrid's worker processes: the same results whatever the number of workers."""

from __future__ import annotations

import torch
from conftest import checkpoint_state

from ffm.run_dir import RunDirectory
from ffm.runtime import run_local


def _train_losses(run_dir: str) -> list[list[float]]:
    return [[c["train_loss"] for c in line["clients"]] for line in RunDirectory(run_dir).read_metrics()
            if line["round"] > 0]


def test_two_workers_give_the_bit_identical_states_of_one_at_the_same_threads_per_client(job_factory):
    # SCAFFOLD keeps each client's control variate in its node state: the contexts must come back from workers
    common = {"strategy__name": "scaffold", "train__optimizer": "sgd", "federation__worker_threads": 1}
    one = job_factory("one", **common, federation__workers=1)
    two = job_factory("two", **common, federation__workers=2)
    run_local(one)
    _, grid = run_local(two)
    a, b = checkpoint_state(one.run_dir, 2), checkpoint_state(two.run_dir, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _train_losses(one.run_dir) == _train_losses(two.run_dir)
    assert all("scaffold-ci" in ctx.state.array_records for ctx in grid.contexts.values())


def test_workers_at_other_thread_counts_agree_to_float_tolerance(job_factory):
    one = job_factory("one", federation__workers=1)
    two = job_factory("two", federation__workers=2)
    run_local(one)
    run_local(two)
    a, b = checkpoint_state(one.run_dir, 2), checkpoint_state(two.run_dir, 2)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)


def test_a_client_that_fails_in_a_worker_is_rejected_and_the_round_goes_on(job_factory):
    common = {"client__mods": ["dropout"], "client__dropout": 0.5, "federation__rounds": 2}
    one, _ = run_local(job_factory("one", **common))
    two, _ = run_local(job_factory("two", **common, federation__workers=2))
    assert two["rejected_updates"] == one["rejected_updates"] > 0
    assert two["failed_rounds"] == one["failed_rounds"]
