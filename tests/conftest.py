"""Shared fixtures: a tiny random BERT saved to disk (loaded through the real local-directory path) and
small jobs on real BBC News text. Everything is offline and seeded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from ffm.config import JobConfig, job_from_dict
from ffm.models import resolve_model_path
from ffm.run_dir import RunDirectory

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on the machine's cores: one thread each
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT with MiniLM's tokenizer, saved like any local model folder."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_job(run_dir: Path, model_dir: Path, **overrides: object) -> JobConfig:
    """A small job: 3 clients, 2 rounds, 2 local steps, 90 BBC News articles, the tiny model."""
    raw: dict = {
        "run_dir": str(run_dir),
        "progress": False,
        "model": {"name": str(model_dir), "max_length": 32},
        "data": {"source": "bbc_news", "max_examples": 90, "partitioner": "iid"},
        "train": {"lr": 0.01, "batch_size": 8, "local_steps": 2, "eval_batch_size": 32},
        "federation": {"num_clients": 3, "rounds": 2},
    }
    for dotted, value in overrides.items():
        section, _, key = dotted.rpartition("__")
        (raw.setdefault(section, {}) if section else raw)[key] = value
    return job_from_dict(raw)


@pytest.fixture
def job_factory(tmp_path: Path, tiny_model_dir: Path):
    """Build a small job in this test's tmp dir; override keys as section__key=value."""

    def build(name: str = "run", **overrides: object) -> JobConfig:
        return make_job(tmp_path / name, tiny_model_dir, **overrides)

    return build


@pytest.fixture
def carried(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every (message, reply) pair the LocalGrid carries during the test, in order."""
    from ffm.runtime import LocalGrid

    pairs: list = []
    deliver = LocalGrid._deliver

    def record(self, msg):
        reply = deliver(self, msg)
        pairs.append((msg, reply))
        return reply

    monkeypatch.setattr(LocalGrid, "_deliver", record)
    return pairs


def checkpoint_state(run_dir: str, server_round: int) -> dict[str, torch.Tensor]:
    """The global state a run saved after ``server_round``."""
    payload = torch.load(RunDirectory(run_dir).checkpoint_path(server_round), weights_only=True)
    return payload["state"]


def run_interrupted(job: JobConfig, monkeypatch: pytest.MonkeyPatch, *, at_train_call: int) -> None:
    """Run ``job`` until the ``at_train_call``-th client training starts and press Ctrl-C there (mid-round)."""
    import ffm.client
    from ffm.runtime import run_local

    calls = {"n": 0}
    real = ffm.client.train_steps

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_train_call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ffm.client, "train_steps", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_local(job)
