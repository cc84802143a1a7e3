"""Text classification: a fresh head over the backbone, cross-entropy loss, accuracy as the primary metric.

Under label skew a party's local steps push down the logits of the classes it lacks, and averaging those
updates can leave a class that few parties hold never predicted (BBC at Dirichlet 0.1: see
bench/results/convergence.md). ``task.logit_adjust`` is the correction of FedLC (Zhang et al., ICML 2022) in its
logit-adjustment form (Menon et al., ICLR 2021; balanced softmax at 1): the local loss reads the logits plus
tau * log of the party's own class frequencies, so the party explains its skew by the offset instead of by the
shared head. The frequencies are add-one smoothed (a class the party lacks counts as one example): pushed down
far less, not left out, because a party that holds one class would otherwise have nothing left to learn
(measured: leaving absent classes out cost BBC's seed 0 14 points). Evaluation reads the plain logits.
``task.head_aggregation=per_class`` corrects the other side, the server's: each class's head row is averaged over
the parties that hold the class, weighted by their counts of it (ffm/strategies/class_head.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from flwr.serverapp.strategy import Strategy
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from ffm.models.backbone import load_model
from ffm.models.config import ModelConfig
from ffm.settings import Job, option, require
from ffm.strategies.class_head import CLASS_COUNTS, PerClassHead
from ffm.tasks.base import Task, TaskConfig, ensure_pad_token
from ffm.tasks.examples import Examples, batches

__all__ = ["TextClassification", "TextClassificationConfig"]


@dataclass
class TextClassificationConfig(TaskConfig):
    """A classifier's keys: the label-skew corrections of its local loss and of its head's aggregation."""

    name: str = "text_classification"
    logit_adjust: float = option(0.0, "tau of the local loss's logit adjustment by the party's own class frequencies "
                                      "(FedLC-style label-skew correction: logits + tau * log frequency, add-one "
                                      "smoothed: a class the party lacks is pushed down far less); 0 = off, "
                                      "1 = balanced softmax; evaluation reads the plain logits")
    head_aggregation: str = option("mean", "how the server aggregates the classification head: mean (as the "
                                           "strategy does every tensor) or per_class (each class's row averaged "
                                           "over the parties holding it, weighted by their counts of it; each "
                                           "party then reports its label counts to the server)",
                                   choices=("mean", "per_class"))

    def __post_init__(self) -> None:
        require(self.logit_adjust >= 0, f"task.logit_adjust must be 0 (off) or positive (1 = balanced softmax), "
                                        f"got {self.logit_adjust}")


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

    def party_objective(self, data: Examples) -> Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
        if not self.cfg.logit_adjust:
            return self.loss
        held, tau = data.tensors["labels"], self.cfg.logit_adjust

        def adjusted(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            # minlength: a grown head (a class-incremental stream) has rows for classes no party holds yet
            counts = torch.bincount(held, minlength=logits.shape[-1]).float() + 1.0
            offset = tau * torch.log(counts / counts.sum())
            return F.cross_entropy(logits + offset.to(logits), batch["labels"])

        return adjusted

    def party_metrics(self, data: Examples, num_labels: int) -> dict[str, Any]:
        if self.cfg.head_aggregation != "per_class":
            return {}
        return {CLASS_COUNTS: torch.bincount(data.tensors["labels"], minlength=num_labels).tolist()}

    def wrap_strategy(self, strategy: Strategy, job: Job) -> Strategy:
        return PerClassHead(strategy) if self.cfg.head_aggregation == "per_class" else strategy

    @property
    def needs_each_update(self) -> bool:
        return self.cfg.head_aggregation == "per_class"

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
