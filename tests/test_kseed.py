"""FedKSeed: zeroth-order steps along K shared seeds; step records up, the sparse history down, no parameter on
the wire, and every party rebuilding the same model (tiny random BERT, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from ffm.config import ConfigError
from ffm.keys import ARRAYS_KEY, METRICS_KEY
from ffm.methods.kseed_aggregation import KSeedAggregation, read_history
from ffm.methods.kseed_federation import (
    STEP_COEF,
    STEP_INDEX,
    Replica,
    apply_row,
    seed_probabilities,
    seed_values,
    zeroth_order_steps,
)
from ffm.run_dir import RunDirectory
from ffm.runtime import run_local
from ffm.tasks import step_batches
from ffm.workspace import workspace_for

KSEED = {"method__name": "fedkseed", "method__seeds": 16, "train__lr": 1e-4, "federation__fraction_evaluate": 0.0}


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_replaying_a_clients_step_records_rebuilds_its_trained_parameters_bit_for_bit(job_factory):
    job = job_factory("replay", **KSEED)
    ws = workspace_for(job)
    ws.load(ws.initial_state)
    seeds = seed_values(job.seed, 16)
    batches = step_batches(ws.examples("train", 0), 8, 5, torch.Generator().manual_seed(0))

    indices, coefs, _, seen, _ = zeroth_order_steps(
        ws.model, batches, ws.task.loss, seeds=seeds, probabilities=np.full(16, 1 / 16), eps=1e-3,
        lr_at=lambda _: 1e-3, choice=np.random.default_rng(0))
    trained = _trainable(ws.model)
    ws.load(ws.initial_state)
    for j, c in zip(indices, coefs, strict=True):
        apply_row(ws.model, {j: c}, seeds)

    assert len(indices) == 5 and seen > 0 and any(c != 0 for c in coefs)
    assert all(torch.equal(trained[k], v) for k, v in _trainable(ws.model).items())
    assert any(not torch.equal(trained[k], ws.initial_state[k]) for k in trained)


def test_zeroth_order_steps_descend_a_loss_without_a_backward_pass():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    x = torch.randn(64, 8)
    y = x @ torch.arange(8.0).unsqueeze(1)
    objective = lambda m, b: torch.nn.functional.mse_loss(m(b["x"]), b["y"])  # noqa: E731
    before = float(objective(model, {"x": x, "y": y}))

    zeroth_order_steps(model, ({"x": x, "y": y} for _ in range(300)), objective, seeds=seed_values(0, 64),
                       probabilities=np.full(64, 1 / 64), eps=1e-3, lr_at=lambda _: 0.01,
                       choice=np.random.default_rng(0))

    assert float(objective(model, {"x": x, "y": y})) < 0.5 * before


def test_a_fedkseed_round_sends_eight_bytes_a_step_up_and_the_sparse_history_down(job_factory, carried):
    job = job_factory("wire", **KSEED, federation__rounds=3)

    summary, _ = run_local(job)

    trains = [(m, r) for m, r in carried if m.metadata.message_type == "train"]
    assert len(trains) == 3 * 3
    for msg, reply in trains:
        assert set(msg.content[ARRAYS_KEY]) == {"kseed-round", "kseed-index", "kseed-value"}  # no parameter
        assert set(reply.content[ARRAYS_KEY]) == {STEP_INDEX, STEP_COEF}
        assert reply.content[ARRAYS_KEY][STEP_INDEX].numpy().shape == (2,)  # train.local_steps
    header = 128  # each array travels as .npy: a 128-byte header, then the data
    assert summary["bytes_up"] == 3 * 3 * (2 * header + 2 * 8)  # 8 bytes a step: int32 seed index, float32 step
    history = [len(read_history(m.content[ARRAYS_KEY])) for m, _ in trains]
    assert history == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # every finished round's row, to every client
    entries = sum(len(row) for row in read_history(trains[-1][0].content[ARRAYS_KEY]))
    assert summary["bytes_down"] == sum(3 * header + 12 * sum(len(row) for row in read_history(m.content[ARRAYS_KEY]))
                                        for m, _ in trains)
    assert 0 < entries <= 2 * 3 * 2  # at most one seed per step per client per round


def test_every_node_rebuilds_the_servers_global_model_bit_for_bit_from_the_history(job_factory, carried):
    job = job_factory("same", **KSEED, federation__rounds=3)
    run_local(job)
    final = RunDirectory(job.run_dir).latest_checkpoint()["state"]  # the server's model after round 3
    last = [m for m, _ in carried if m.metadata.message_type == "train"][-1]
    rows = read_history(last.content[ARRAYS_KEY])
    reply_rows = [r for _, r in carried if r.metadata.message_type == "train"][-3:]
    weights = [float(r.content[METRICS_KEY]["num-examples"]) for r in reply_rows]
    row: dict[int, float] = {}
    for r, w in zip(reply_rows, weights, strict=True):
        for j, c in zip(*(r.content[ARRAYS_KEY][k].numpy().tolist() for k in (STEP_INDEX, STEP_COEF)), strict=True):
            row[j] = row.get(j, 0.0) + w / sum(weights) * c
    rows.append({j: float(np.float32(v)) for j, v in row.items() if v != 0.0})

    ws = workspace_for(job)
    Replica().sync(ws.model, ws.initial_state, rows, seed_values(job.seed, 16))

    assert all(torch.equal(final[k], v) for k, v in _trainable(ws.model).items())


def test_with_one_client_the_global_model_is_that_clients_own_zeroth_order_run(job_factory, carried):
    job = job_factory("one", **KSEED, federation__num_clients=1, federation__rounds=2)
    run_local(job)
    ws = workspace_for(job)
    ws.load(ws.initial_state)
    seeds = seed_values(job.seed, 16)
    for _, reply in carried:
        if reply.metadata.message_type == "train":
            for j, c in zip(*(reply.content[ARRAYS_KEY][k].numpy().tolist() for k in (STEP_INDEX, STEP_COEF)),
                            strict=True):
                apply_row(ws.model, {j: c}, seeds)
    final = RunDirectory(job.run_dir).latest_checkpoint()["state"]

    assert all(torch.allclose(final[k], v, atol=1e-6) for k, v in _trainable(ws.model).items())


def test_a_reply_with_a_seed_out_of_range_or_a_step_that_is_not_finite_is_rejected():
    rule = KSeedAggregation(None, seeds=seed_values(0, 4), max_steps=3)

    def reply(index: list[int], coef: list[float]) -> RecordDict:
        return RecordDict({ARRAYS_KEY: ArrayRecord({STEP_INDEX: Array(np.array(index, dtype=np.int32)),
                                                    STEP_COEF: Array(np.array(coef, dtype=np.float32))}),
                           METRICS_KEY: MetricRecord({"num-examples": 1})})

    assert rule.reply_problem(reply([0, 3], [0.1, -0.2])) is None
    assert "outside 0..3" in rule.reply_problem(reply([4], [0.1]))
    assert "not finite" in rule.reply_problem(reply([1], [float("nan")]))
    assert "at most 3 steps" in rule.reply_problem(reply([0, 1, 2, 3], [0.0] * 4))


def test_fedkseed_pro_draws_the_seeds_that_moved_the_model_most_more_often():
    assert np.allclose(seed_probabilities([], 4), 0.25)

    p = seed_probabilities([{0: 0.5, 1: -0.1}, {0: 0.3}], 4)

    assert p[0] > p[1] > p[2] == p[3] and p.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(("overrides", "named"), [
    ({"strategy__name": "fedprox"}, "strategy.name=fedprox"),
    ({"privacy__clipping": "fixed", "privacy__noise_multiplier": 1.0}, "client-level DP"),
    ({"mode": "local"}, "mode=local"),
    ({"continual__kind": "class_incremental"}, "continual.kind=none"),
])
def test_what_reads_or_changes_a_state_update_is_a_one_line_error_with_fedkseed(job_factory, overrides, named):
    with pytest.raises(ConfigError, match=named):
        job_factory("bad", **KSEED, **overrides)


def test_a_resumed_fedkseed_run_ends_bit_identical_to_an_uninterrupted_one(job_factory, monkeypatch):
    import ffm.methods.kseed as kseed

    straight = job_factory("straight", **KSEED, federation__rounds=3)
    run_local(straight)
    broken = job_factory("broken", **KSEED, federation__rounds=3)
    calls, real = [], kseed.zeroth_order_steps

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * 3 + 1:  # Ctrl-C as round 3's first client starts: 2 rounds of history are saved
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(kseed, "zeroth_order_steps", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_local(broken)

    broken.resume = True
    run_local(broken)

    final_a = RunDirectory(straight.run_dir).latest_checkpoint()
    final_b = RunDirectory(broken.run_dir).latest_checkpoint()
    assert final_a["round"] == final_b["round"] == 3
    assert all(torch.equal(final_a["state"][k], final_b["state"][k]) for k in final_a["state"])
