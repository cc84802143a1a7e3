"""Secure aggregation (SecAgg+) on the Message API: the sum within the quantization bound, dropouts, failure
below the threshold, and a server that never holds one client's unmasked update."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict

from ffm.config import ConfigError
from ffm.keys import ARRAYS_KEY
from ffm.runtime import LocalGrid, run_local
from ffm.secagg import mod as secagg_module
from ffm.secagg.mod import MASKED_KEY, SECAGG_KEY
from ffm.secagg.protocol import dequantize, neighbours, prg, quantize

TEN = {"federation__num_clients": 10, "federation__rounds": 1, "federation__fraction_evaluate": 0.0}


def _final(job) -> dict[str, torch.Tensor]:
    return torch.load(sorted((Path(job.run_dir) / "checkpoints").glob("*.pt"))[-1], weights_only=True)["state"]


def _bound(job) -> float:
    """Largest error of a coordinate of the weighted mean (half a quantization step) plus float32 rounding."""
    return 0.5 * job.privacy.secagg_bound / 2**job.privacy.secagg_bits + 1e-6


def _assert_within(secure: dict, plain: dict, bound: float) -> None:
    assert secure.keys() == plain.keys()
    worst = max(float((secure[k].double() - plain[k].double()).abs().max()) for k in plain)
    assert worst <= bound
    assert any(not torch.equal(secure[k], plain[k]) for k in plain) or worst == 0.0


def _drop_stage(monkeypatch, stage: str, nodes: set[int]) -> None:
    """The given nodes fail to answer the messages of one SecAgg stage (as if they dropped out just then)."""
    deliver = LocalGrid._deliver

    def maybe_fail(self, msg):
        record = msg.content.config_records.get(SECAGG_KEY)
        if record is not None and str(record["stage"]) == stage and msg.metadata.dst_node_id in nodes:
            return Message(Error(code=0, reason=f"node dropped out at {stage} (test)"), reply_to=msg)
        return deliver(self, msg)

    monkeypatch.setattr(LocalGrid, "_deliver", maybe_fail)


def test_quantized_masked_sums_decode_to_the_plain_sum_within_the_bound():
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.1, 1000) for _ in range(5)]
    masks = [prg(bytes([i]) * 32, 1000) for i in range(5)]
    masked = [quantize(u, 0.5, 16).view(np.uint64) + m for u, m in zip(updates, masks, strict=True)]
    total = sum(masked[1:], masked[0].copy())
    for m in masks:
        total = total - m
    assert np.abs(dequantize(total, 0.5, 16) - sum(updates)).max() <= 5 * 0.5 * 0.5 / 2**16


def test_the_sparse_graph_is_symmetric_so_pairwise_masks_cancel():
    nodes = list(range(1, 12))
    for k in (2, 4, 5):
        graph = {n: set(neighbours(nodes, n, k)) for n in nodes}
        assert all(m in graph[n] and n in graph[m] for n in nodes for m in graph[n])
        assert all(len(g) == 2 * math.ceil(k / 2) for g in graph.values())
    assert neighbours(nodes, 3, 0) == [n for n in nodes if n != 3]


def test_the_secure_aggregate_equals_fedavg_within_the_quantization_bound(job_factory):
    plain = job_factory("plain", **TEN)
    secure = job_factory("secure", privacy__secure_aggregation=True, **TEN)
    run_local(plain)
    summary, _ = run_local(secure)
    _assert_within(_final(secure), _final(plain), _bound(secure))
    assert summary["secure_aggregation"]["rounds"]["1"]["survivors"] == 10


def test_sparse_secagg_plus_neighbourhoods_give_the_same_sum(job_factory):
    plain = job_factory("plain", **TEN)
    secure = job_factory("sparse", privacy__secure_aggregation=True, privacy__secagg_neighbours=4, **TEN)
    run_local(plain)
    run_local(secure)
    _assert_within(_final(secure), _final(plain), _bound(secure))


def test_three_of_ten_dropping_after_sending_their_masked_update_still_decode(job_factory, monkeypatch):
    plain = job_factory("plain", **TEN)
    run_local(plain)
    _drop_stage(monkeypatch, "unmask", {2, 5, 9})
    secure = job_factory("secure", privacy__secure_aggregation=True, **TEN)
    summary, _ = run_local(secure)
    _assert_within(_final(secure), _final(plain), _bound(secure))  # their updates are in the sum
    assert not summary["failed_rounds"]


def test_clients_that_drop_before_sending_have_their_pairwise_masks_removed(job_factory):
    dropping = {"client__mods": ["dropout"], "client__dropout": 0.3, **TEN}
    plain = job_factory("plain", **dropping)
    secure = job_factory("secure", privacy__secure_aggregation=True, **dropping)
    run_local(plain)
    summary, _ = run_local(secure)
    rounds = summary["secure_aggregation"]["rounds"]["1"]
    assert rounds["dropped"] >= 1 and rounds["survivors"] + rounds["dropped"] == 10
    _assert_within(_final(secure), _final(plain), _bound(secure))  # the same survivors, the same mean


def test_below_the_threshold_the_round_fails_and_the_state_is_unchanged(job_factory, monkeypatch):
    _drop_stage(monkeypatch, "unmask", {1, 2, 3, 4, 5})  # 5 answer; 7 shares are needed
    job = job_factory("secure", privacy__secure_aggregation=True, **TEN, federation__max_failed_rounds=5)
    summary, _ = run_local(job)
    from ffm.workspace import workspace_for

    assert summary["failed_rounds"] == [1]
    line = next(m for m in summary_lines(job) if m["round"] == 1)
    assert "fewer than 7 shares" in line["failed"]
    initial = workspace_for(job).initial_state
    assert all(torch.equal(_final(job)[k], initial[k]) for k in initial)


def summary_lines(job) -> list[dict]:
    import json

    return [json.loads(x) for x in (Path(job.run_dir) / "metrics.jsonl").read_text().splitlines() if x]


def test_no_server_side_message_holds_a_clients_unmasked_update(job_factory, carried, monkeypatch):
    plain_updates: list[np.ndarray] = []
    mask = secagg_module._mask

    def record(job, context, node, delta, weight):
        plain_updates.append(quantize(delta, job.privacy.secagg_bound, job.privacy.secagg_bits) * weight)
        return mask(job, context, node, delta, weight)

    monkeypatch.setattr(secagg_module, "_mask", record)
    job = job_factory("secure", privacy__secure_aggregation=True)
    run_local(job)
    replies = [reply for msg, reply in carried if msg.metadata.message_type == "train"]
    assert replies and len(plain_updates) == len(replies)
    for reply in replies:
        assert set(reply.content.array_records) == {MASKED_KEY}  # no ARRAYS_KEY: the trained state stays home
        sent = reply.content[MASKED_KEY]["vector"].numpy()
        for update in plain_updates:
            assert np.mean(sent == update) < 0.01  # masked: nothing like any client's quantized update
    assert all(ARRAYS_KEY not in r.content.array_records for r in replies)


def test_a_client_refuses_to_reveal_both_secrets_of_one_node():
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    context.state[secagg_module.STATE_KEY] = ConfigRecord({"held-src": [2], "held-s": [b"s"], "held-b": [b"b"]})
    with pytest.raises(ValueError, match="both secrets"):
        secagg_module._unmask(context, ConfigRecord({"dropped": [2], "survivors": [2]}))


def test_an_update_with_nan_is_refused_on_the_client_before_masking(job_factory, monkeypatch):
    update_vector = secagg_module.update_vector
    poisoned = {"done": False}

    def nan_once(trained, received):
        vector = update_vector(trained, received)
        if not poisoned["done"]:
            poisoned["done"] = True
            vector[0] = np.nan
        return vector

    monkeypatch.setattr(secagg_module, "update_vector", nan_once)
    summary, _ = run_local(job_factory("secure", privacy__secure_aggregation=True, **TEN))
    assert not summary["failed_rounds"] and summary["secure_aggregation"]["rounds"]["1"]["dropped"] == 1


@pytest.mark.parametrize("strategy", ["fedmedian", "krum", "fedadam"])
def test_rules_that_need_each_update_are_a_configuration_error(job_factory, strategy):
    with pytest.raises(ConfigError, match="sees only the sum"):
        job_factory(privacy__secure_aggregation=True, strategy__name=strategy)


def test_server_side_dp_with_secure_aggregation_is_a_configuration_error(job_factory):
    with pytest.raises(ConfigError, match=r"privacy\.side=client"):
        job_factory(privacy__secure_aggregation=True, privacy__clipping="fixed", privacy__side="server")


def test_distributed_dp_clips_and_noises_on_the_clients_before_masking(job_factory):
    quiet = job_factory("quiet", privacy__secure_aggregation=True, privacy__clipping="fixed",
                        privacy__side="client", privacy__noise_multiplier=0.0001, privacy__clipping_norm=0.01,
                        federation__rounds=1)
    loud = job_factory("loud", privacy__secure_aggregation=True, privacy__clipping="fixed",
                       privacy__side="client", privacy__noise_multiplier=5.0, privacy__clipping_norm=0.01,
                       federation__rounds=1)
    run_local(quiet)
    run_local(loud)
    from ffm.workspace import workspace_for

    initial = workspace_for(quiet).initial_state
    moved = math.sqrt(sum(float((_final(quiet)[k].double() - initial[k].double()).pow(2).sum()) for k in initial))
    assert moved <= 0.01 + 1e-3  # the mean of updates clipped to 0.01
    assert any(not torch.allclose(_final(quiet)[k], _final(loud)[k]) for k in initial)
    assert 0 < summary_lines(quiet)[-1]["epsilon"] < float("inf")
