"""Text classification: a fresh head over the backbone, cross-entropy loss, accuracy as the primary metric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from ffm.models.backbone import load_model
from ffm.models.config import ModelConfig
from ffm.tasks.base import Task, TaskConfig, ensure_pad_token
from ffm.tasks.examples import Examples, batches

__all__ = ["TextClassification", "TextClassificationConfig"]


@dataclass
class TextClassificationConfig(TaskConfig):
    """Text classification has no keys of its own."""

    name: str = "text_classification"


class TextClassification(Task):
    """Label a text with one of the data set's classes (``text`` + ``label`` columns)."""

    config = TextClassificationConfig
    columns = ("text", "label")
    primary_metric = "accuracy"
    higher_is_better = True
    peft_task_type = "SEQ_CLS"
    growable_head = True

    def build_model(
        self, model: ModelConfig, label_names: list[str], tokenizer: PreTrainedTokenizerBase, seed: int
    ) -> PreTrainedModel:
        return load_model(
            AutoModelForSequenceClassification,
            model,
            tokenizer,
            seed,
            num_labels=len(label_names),
            ignore_mismatched_sizes=True,  # a saved head for other labels is replaced by a fresh one
        )

    def encode(self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Examples:
        ensure_pad_token(tokenizer)
        enc = tokenizer(
            list(ds["text"]), truncation=True, max_length=max_length, padding="max_length", return_tensors="pt"
        )
        mask = enc["attention_mask"]
        labels = torch.tensor(ds["label"], dtype=torch.long)
        return Examples({"input_ids": enc["input_ids"], "attention_mask": mask, "labels": labels}, mask.sum(dim=1))

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: Examples, batch_size: int) -> dict[str, float]:
        """Mean cross-entropy, accuracy, and how many distinct classes the model predicted."""
        model.eval()
        loss_sum, correct, predicted = 0.0, 0, set()
        for batch in batches(data, batch_size):
            out = model(**batch)
            guesses = out.logits.argmax(dim=-1)
            loss_sum += float(out.loss) * len(batch["labels"])
            correct += int((guesses == batch["labels"]).sum())
            predicted.update(guesses.tolist())
        n = max(len(data), 1)
        return {"loss": loss_sum / n, "accuracy": correct / n, "predicted-classes": len(predicted),
                "num-examples": len(data)}

    @torch.inference_mode()
    def example_losses(self, model: nn.Module, data: Examples, batch_size: int = 64) -> torch.Tensor:
        model.eval()
        out = []
        for batch in batches(data, batch_size):
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            out.append(F.cross_entropy(logits, batch["labels"], reduction="none"))
        return torch.cat(out) if out else torch.zeros(0)

    def diagnose(self, metrics: dict[str, Any]) -> str | None:
        if metrics.get("predicted-classes") == 1:
            return (
                "the model predicts one class for every test example (it collapsed to the majority class); "
                "the learning rate is likely too high for this mode: lower train.lr, or set "
                "train.scheduler=cosine train.warmup_ratio=0.1"
            )
        return None
