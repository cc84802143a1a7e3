"""The LocalGrid's worker processes: the same results whatever the number of workers."""

from __future__ import annotations

import os
import signal
import time

import torch
from conftest import checkpoint_state
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import ffm.runtime.auto_workers as auto
from ffm.run_dir import RunDirectory
from ffm.runtime import LocalGrid, run_local
from ffm.runtime.auto_workers import auto_workers


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


GIB = 1 << 30


def _auto(**given) -> int:
    args = {"clients_per_round": 50, "parameters": 22_700_000, "trainable": 300_000, "cores": 8,
            "available": 32 * GIB, "resident": GIB}
    return auto_workers(**{**args, **given})


def test_auto_workers_take_one_per_core_for_a_real_model_and_many_clients():
    assert _auto() == 8


def test_auto_workers_never_exceed_the_clients_of_a_round():
    assert _auto(clients_per_round=3) == 3
    assert _auto(clients_per_round=1) == 1


def test_auto_workers_stay_at_one_for_a_small_model_or_one_core():
    assert _auto(parameters=100_000) == 1
    assert _auto(cores=1) == 1


def test_auto_workers_are_as_many_as_the_free_memory_holds():
    # each worker: half the resident process (0.5 GiB) + 16 bytes per trainable parameter (~0.34 GiB)
    assert _auto(available=2 * GIB, trainable=22_700_000) == 1
    assert _auto(available=4 * GIB, trainable=22_700_000) == 3
    assert _auto(available=None) == 8  # unknown memory: the cores decide


def test_workers_zero_resolves_on_the_local_grid_before_round_one(job_factory, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the workers share the threads torch was given
    try:
        _, grid = run_local(job_factory("tiny", federation__workers=0))
        assert grid.workers == 1  # the test model is small: forking would cost more than it saves
        monkeypatch.setattr(auto, "SMALL_MODEL", 0)
        _, grid = run_local(job_factory("pretend-large", federation__workers=0))
        assert (grid.workers, grid.threads) == (2, 1)
    finally:
        torch.set_num_threads(threads)


def test_a_worker_process_that_dies_costs_only_the_message_it_held():
    caller = os.getpid()
    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        if os.getpid() != caller:
            os._exit(3)  # a helper killed mid-message (as by the OOM killer)
        time.sleep(0.2)  # the caller works slowly enough for the helper to claim a message
        return Message(RecordDict({"metrics": MetricRecord({"ok": 1})}), reply_to=msg)

    def hung(signum, frame):
        raise TimeoutError("the pool waited for a message the dead helper held")

    grid = LocalGrid(app, num_nodes=4, run_config={}, workers=2, threads=1)
    sent = [Message(RecordDict(), node, MessageType.TRAIN, group_id="1") for node in range(1, 5)]
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)  # a pool that lost the message would wait forever: fail instead
    try:
        replies = list(grid.send_and_receive(sent))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)

    assert [r.metadata.reply_to_message_id for r in replies] == [m.metadata.message_id for m in sent]
    died = [r for r in replies if r.has_error()]
    assert len(died) == 1 and "worker process serving this node died (exit code 3)" in died[0].error.reason
    assert sum(not r.has_error() for r in replies) == 3
