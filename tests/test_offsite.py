"""Offsite-tuning: the clients tune the adapter layers on an emulator (the middle layers dropped); nothing of the
middle ever travels, and the server evaluates the full model with the adapter plugged in and the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from ffm.config import ConfigError
from ffm.evaluation import Evaluator
from ffm.methods.offsite import emulated, emulator_layers, layer_list
from ffm.models import resolve_model_path
from ffm.runtime import run_local
from ffm.workspace import workspace_for


@pytest.fixture(scope="module")
def six_layer_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("six-layer-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=6,
                                             num_attention_heads=2, intermediate_size=64,
                                             max_position_embeddings=128)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _job(job_factory, model_dir: Path, name: str = "offsite", **overrides):
    settings = {"model__name": str(model_dir), "method__name": "offsite", "method__adapter_layers": 1,
                "method__keep_every": 2, **overrides}
    return job_factory(name, **settings)


def test_the_emulator_keeps_the_adapter_layers_and_every_second_middle_layer():
    assert emulator_layers(6, 1, 2) == [0, 1, 3, 5]
    assert emulator_layers(12, 2, 3) == [0, 1, 2, 5, 8, 10, 11]
    assert emulator_layers(6, 1, 1) == list(range(6))  # keep_every=1: the emulator is the model


def test_no_client_message_carries_a_tensor_of_the_middle_layers(job_factory, six_layer_bert, carried):
    job = _job(job_factory, six_layer_bert)

    run_local(job)

    names = {name for msg, reply in carried for content in (msg.content, reply.content)
             for record in content.array_records.values() for name in record}
    layers = {int(n.split("encoder.layer.")[1].split(".")[0]) for n in names if "encoder.layer." in n}
    assert layers == {0, 5}  # the adapter: the bottom and the top layer
    assert any(n.startswith("classifier.") for n in names)  # and the head
    assert not any("embeddings" in n for n in names)


def test_clients_run_the_emulator_and_the_server_reports_the_full_model_and_the_emulator(job_factory, six_layer_bert,
                                                                                       monkeypatch):
    job = _job(job_factory, six_layer_bert, "views")
    ws = workspace_for(job)
    calls: list[int] = []
    for index, layer in enumerate(layer_list(ws.model)[2]):
        layer.register_forward_pre_hook(lambda _m, _a, index=index: calls.append(index))

    run_local(job)

    lines = [json.loads(x) for x in Path(job.run_dir, "metrics.jsonl").read_text().splitlines()]
    assert all("test_accuracy" in line and "test_emulator_accuracy" in line for line in lines)
    assert set(calls) == set(range(6))  # the server's full model ran every layer
    assert calls.count(1) > calls.count(2) == calls.count(4)  # layers 2 and 4: the server's evaluations only
    with emulated(ws.model, emulator_layers(6, 1, 2)):
        calls.clear()
        ws.model(input_ids=torch.tensor([[101, 2000, 102]]))
    assert sorted(set(calls)) == [0, 1, 3, 5]
    assert len(layer_list(ws.model)[2]) == 6  # the full model is back after the block


def test_the_adapter_before_any_training_plugged_into_the_model_gives_the_base_models_outputs(job_factory,
                                                                                            six_layer_bert):
    job = _job(job_factory, six_layer_bert, "base")
    ws = workspace_for(job)
    base = ws.task.build_model(job.model, ws.data.label_names, ws.tokenizer, job.seed).eval()

    ours = Evaluator(ws).state(ws.initial_state)
    theirs = ws.task.evaluate(base, ws.examples("test"), job.train.eval_batch_size)

    assert ours == theirs


def test_an_adapter_that_leaves_no_middle_is_a_one_line_error(job_factory, six_layer_bert):
    job = _job(job_factory, six_layer_bert, "deep", method__adapter_layers=3)
    with pytest.raises(ConfigError, match="at most 2 can adapt at each end"):
        workspace_for(job)


def test_a_node_with_its_own_data_holds_only_the_emulator_under_the_full_models_names(job_factory, six_layer_bert,
                                                                                     tmp_path):
    from ffm.data import export_split, party_dir

    job = _job(job_factory, six_layer_bert, "node")
    full = workspace_for(job)
    export_split(full.data, tmp_path / "split")

    node = workspace_for(job, str(party_dir(tmp_path / "split", 0)))

    held = {int(n.split("encoder.layer.")[1].split(".")[0]) for n, _ in node.model.named_parameters()
            if "encoder.layer." in n}
    assert held == {0, 1, 3, 5}  # the middle layers 2 and 4 are gone from the node's memory
    assert sum(p.numel() for p in node.model.parameters()) < sum(p.numel() for p in full.model.parameters())
    assert node.initial_state.keys() == full.initial_state.keys()  # what travels needs no renaming
    assert all(torch.equal(node.initial_state[k], full.initial_state[k]) for k in full.initial_state)
    result = node.task.evaluate(node.model, node.examples("val", 0), 8)  # and it runs
    assert 0.0 <= result["accuracy"] <= 1.0
