"""Streaming aggregation: the running mean equals the list-based rule, and replies are let go as they come."""

from __future__ import annotations

import pytest
import torch
from conftest import checkpoint_state

from ffm.config import load_job
from ffm.runtime import run_local
from ffm.server import streams
from ffm.strategies import streaming


@pytest.mark.parametrize("rule", ["fedavg", "fedadam"])
def test_streaming_aggregation_equals_the_list_based_rule(job_factory, rule):
    listed = job_factory("list", strategy__name=rule, federation__streaming=False)
    streamed = job_factory("stream", strategy__name=rule)
    run_local(listed)
    summary, _ = run_local(streamed)
    a, b = checkpoint_state(listed.run_dir, 2), checkpoint_state(streamed.run_dir, 2)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)
    assert summary["rejected_updates"] == 0


def test_each_reply_is_folded_before_the_next_node_trains(job_factory, monkeypatch):
    import ffm.client

    trained, folded = [], []
    real_train, real_add = ffm.client.train_steps, streaming.RunningMean.add

    def train_steps(*args, **kwargs):
        trained.append(len(folded))  # how many replies were already folded when this node started
        return real_train(*args, **kwargs)

    def add(self, msg):
        folded.append(msg.metadata.src_node_id)
        return real_add(self, msg)

    monkeypatch.setattr(ffm.client, "train_steps", train_steps)
    monkeypatch.setattr(streaming.RunningMean, "add", add)
    run_local(job_factory(federation__rounds=1))
    assert trained == [0, 1, 2] and len(folded) == 3  # node k trains after k replies were folded and let go


def test_rules_that_need_every_reply_keep_the_list():
    assert streams(load_job(None, ["strategy.name=fedavg"]))
    for override in ("strategy.name=fedmedian", "strategy.name=krum", "privacy.clipping=fixed", "mode=local",
                     "federation.streaming=false"):
        assert not streams(load_job(None, [override])), override
