"""The task seam: the task names its data schema, its metrics and their direction, and warns on collapse."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
import torch.nn.functional as F

from ffm.config import load_job
from ffm.data import ClientData, FederatedData
from ffm.errors import ConfigError, DataError
from ffm.runtime import run_local
from ffm.tasks import TASKS, build_task
from ffm.tasks.examples import Examples
from ffm.workspace import _check_schema


def test_an_unknown_task_is_a_config_error_listing_the_registered_tasks():
    with pytest.raises(ConfigError, match=r"task\.name: 'mlm' is not one of .*text_classification"):
        load_job(None, ["task.name=mlm"])


def test_data_without_a_column_the_task_needs_is_a_data_error_naming_it():
    task = build_task(load_job(None).task)
    texts = datasets.Dataset.from_dict({"text": ["a", "b"]})

    with pytest.raises(DataError, match=r"missing \['label'\]"):
        _check_schema(FederatedData(test=texts, clients=[ClientData(texts, texts)], label_names=[]), task)


def test_text_classification_maximizes_accuracy():
    task = TASKS["text_classification"](load_job(None).task)

    assert task.primary_metric == "accuracy" and task.better(0.9, 0.8) and not task.better(0.8, 0.9)


def test_a_model_that_predicts_one_class_everywhere_gets_a_warning_that_names_the_fix():
    task = build_task(load_job(None).task)

    assert "train.lr" in task.diagnose({"predicted-classes": 1, "accuracy": 0.25})
    assert task.diagnose({"predicted-classes": 3, "accuracy": 0.25}) is None


def test_the_run_reports_the_tasks_primary_metric_in_every_line_and_the_summary(job_factory):
    summary, _ = run_local(job_factory())

    assert summary["primary_metric"] == "accuracy"
    assert 0.0 <= summary["final_test_accuracy"] <= 1.0
    assert summary["best_test_accuracy"] >= summary["final_test_accuracy"]
    assert isinstance(summary["warnings"], list)


def test_a_run_whose_model_collapsed_to_one_class_says_so_in_its_summary(job_factory):
    summary, _ = run_local(job_factory(train__lr=50.0, train__local_steps=4))  # far too high: it collapses

    (warning,) = summary["warnings"]
    assert "predicts one class" in warning and "train.lr" in warning


def _vit_job(job_factory, name: str, source: str, **overrides):
    settings = {"task__name": "image_classification", "model__from_scratch": True, "model__architecture": "vit",
                "model__hidden_size": 32, "model__layers": 1, "model__heads": 2, "method__name": "full",
                "data__source": source, "data__max_examples": 600, "train__lr": 5e-3, "train__local_steps": 25,
                "train__batch_size": 16,
                "federation__fraction_evaluate": 0.0, **overrides}
    if source == "digits":
        settings.update(task__image_size=8, task__patch_size=2)
    return job_factory(name, **settings)


@pytest.mark.parametrize("source", ["mnist", "digits"])
def test_a_vit_from_scratch_federates_on_real_digit_images_and_its_accuracy_rises(job_factory, source):
    job = _vit_job(job_factory, f"vit-{source}", source, federation__rounds=3)

    summary, _ = run_local(job)

    lines = [json.loads(x) for x in open(f"{job.run_dir}/metrics.jsonl")]
    # a ViT from scratch learns slowly from a few hundred images: the signal is a clear rise above chance (0.1)
    assert lines[-1]["test_accuracy"] > lines[0]["test_accuracy"] + 0.08, [x["test_accuracy"] for x in lines]
    assert lines[-1]["test_loss"] < lines[0]["test_loss"]
    assert summary["primary_metric"] == "accuracy"


def test_an_image_folder_is_read_per_label_and_converted_to_the_tasks_size(tmp_path):
    from PIL import Image

    from ffm.data.images import load_image_folder
    from ffm.tasks.image_classification import image_tensor

    for label, value in (("cat", 0), ("dog", 255)):
        (tmp_path / label).mkdir()
        Image.new("RGB", (10, 6), (value, value, value)).save(tmp_path / label / "a.png")

    ds = load_image_folder(tmp_path)
    pixels = image_tensor(list(ds["image"]), size=4, channels=1)

    assert ds.features["label"].names == ["cat", "dog"]
    assert pixels.shape == (2, 1, 4, 4)
    assert torch.allclose(pixels[0], torch.tensor(-1.0)) and torch.allclose(pixels[1], torch.tensor(1.0))


def _clip_job(job_factory, name: str, **overrides):
    settings = {"task__name": "image_text_contrastive", "task__projection_dim": 32, "model__architecture": "vit",
                "model__hidden_size": 32, "model__layers": 1, "model__heads": 2, "method__name": "full",
                "data__source": "digits", "data__max_examples": 600, "task__image_size": 8, "task__patch_size": 2,
                "train__lr": 5e-3, "train__local_steps": 25, "train__batch_size": 32, "federation__rounds": 3,
                "federation__fraction_evaluate": 0.0}
    return job_factory(name, **{**settings, **overrides})


def test_clip_style_training_raises_zero_shot_accuracy(job_factory):
    # LiT: the (tiny, random, frozen) text tower embeds each class name; the vision tower learns to match them.
    job = _clip_job(job_factory, "clip", task__freeze_text=True, task__caption="{}")

    run_local(job)

    lines = [json.loads(x) for x in open(f"{job.run_dir}/metrics.jsonl")]
    assert lines[-1]["test_accuracy"] > lines[0]["test_accuracy"] + 0.1, [x["test_accuracy"] for x in lines]


def test_a_frozen_lit_text_tower_neither_trains_nor_travels(job_factory):
    from ffm.workspace import workspace_for

    workspace = workspace_for(_clip_job(job_factory, "lit", task__freeze_text=True))

    text = [p for n, p in workspace.model.named_parameters() if n.startswith("text_model.")]
    assert text and not any(p.requires_grad for p in text)
    assert not any(n.startswith("text_model.") for n in workspace.initial_state)
    assert any(n.startswith("vision_model.") for n in workspace.initial_state)


@pytest.mark.parametrize(("method", "keys"), [("lora", {"method__targets": ["q_proj", "v_proj"]}),
                                              ("ia3", {"method__targets": ["k_proj", "v_proj", "fc2"],
                                                       "method__feedforward": ["fc2"]}), ("bitfit", {})])
def test_peft_methods_federate_a_vit_training_only_their_parameters_and_the_head(job_factory, method, keys):
    from ffm.workspace import workspace_for

    job = _vit_job(job_factory, f"vit-{method}", "digits", method__name=method, federation__rounds=1,
                   train__local_steps=2, **keys)
    summary, _ = run_local(job)
    ws = workspace_for(job)
    assert summary["rounds"] == 1 and not summary["failed_rounds"]
    assert summary["trainable_params"] < summary["total_params"] / 2
    assert any("classifier" in name for name in ws.initial_state)  # the fresh head trains along


def test_soft_prompts_on_an_image_model_are_a_one_line_error(job_factory):
    from ffm.config import ConfigError
    from ffm.workspace import workspace_for

    with pytest.raises(ConfigError, match=r"supports task\.name"):
        workspace_for(_vit_job(job_factory, "vit-prompt", "digits", method__name="prompt_tuning"))


def test_adapters_that_match_no_layer_name_the_layers_there_are(job_factory):
    from ffm.config import ConfigError
    from ffm.workspace import workspace_for

    with pytest.raises(ConfigError, match="q_proj"):  # transformers 5's ViT names its projections q/k/v_proj
        workspace_for(_vit_job(job_factory, "vit-bad", "digits", method__name="lora",
                               method__targets=["query", "value"]))


class _FixedLogits(torch.nn.Module):
    """A classifier whose logits are one trainable row, whatever the input: the loss's gradient on each class."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.row = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_: object) -> SimpleNamespace:
        logits = self.row.expand(len(input_ids), -1)
        return SimpleNamespace(logits=logits, loss=None if labels is None else F.cross_entropy(logits, labels))


def _party(labels: list[int]) -> Examples:
    return Examples({"input_ids": torch.ones(len(labels), 2, dtype=torch.long),
                     "attention_mask": torch.ones(len(labels), 2, dtype=torch.long),
                     "labels": torch.tensor(labels)}, torch.full((len(labels),), 2))


def _class_gradient(objective, model: _FixedLogits, party: Examples) -> torch.Tensor:
    model.zero_grad()
    objective(model, party.tensors).backward()
    return model.row.grad.clone()


def test_logit_adjustment_pushes_down_a_class_the_party_lacks_far_less_and_a_one_class_party_still_learns():
    party, model = _party([0, 0, 1]), _FixedLogits([0.5, 0.0, 0.2])  # class 2 of 3: not held by this party
    plain = build_task(load_job(None).task)
    adjusted = build_task(load_job(None, ["task.logit_adjust=1"]).task)

    assert plain.party_objective(party) == plain.loss  # off: the task's own loss
    pushed = _class_gradient(plain.party_objective(party), model, party)
    eased = _class_gradient(adjusted.party_objective(party), model, party)
    assert 0 < eased[2] < pushed[2] / 2  # a descent step lowers the missing class's logit, by far less

    frequency = torch.tensor([3 / 6, 2 / 6, 1 / 6])  # add-one smoothed counts 2, 1, 0
    by_hand = F.cross_entropy(model.row.detach().expand(3, -1) + torch.log(frequency), party.tensors["labels"])
    assert float(adjusted.party_objective(party)(model, party.tensors)) == pytest.approx(float(by_hand), rel=1e-6)

    alone = _party([1, 1, 1])  # a party holding one class still separates it from the others
    assert _class_gradient(adjusted.party_objective(alone), model, alone)[1] < -0.1


def test_logit_adjustment_is_a_non_negative_key_and_refuses_a_replayed_buffer_it_cannot_count():
    with pytest.raises(ConfigError, match=r"task\.logit_adjust must be 0 \(off\) or positive"):
        load_job(None, ["task.logit_adjust=-1"])
    with pytest.raises(ConfigError, match=r"replay with task\.logit_adjust"):
        load_job(None, ["task.logit_adjust=1", "continual.kind=class_incremental", "continual.stages=2",
                        "federation.rounds=2", "continual.approach=replay"])


def _train_losses(summary: dict) -> list[float]:
    lines = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    return sorted(c["train_loss"] for ln in lines for c in ln.get("clients", []))


def test_a_federated_run_under_label_skew_trains_its_parties_on_the_adjusted_loss(job_factory):
    skewed = {"federation__rounds": 1, "data__partitioner": "dirichlet", "data__alpha": 0.1}
    plain, _ = run_local(job_factory("plain", **skewed))
    adjusted, _ = run_local(job_factory("adjusted", **skewed, task__logit_adjust=1.0))

    assert len(_train_losses(adjusted)) == 3
    assert _train_losses(adjusted) != pytest.approx(_train_losses(plain), rel=1e-3)
