"""Text classification: tokenized tensors, the local training loop, and accuracy/loss evaluation.

Examples are tokenized once per data owner and kept as padded tensors; each batch is cut to its
longest example, so a short-text data set does not pay for ``model.max_length``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import datasets
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

__all__ = ["Examples", "batches", "evaluate", "steps_per_epoch", "tokenize", "train_steps"]


@dataclass
class Examples:
    """Tokenized examples of one split: (N, T) ids and mask, (N,) labels, (N,) lengths."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def tokenize(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Examples:
    enc = tokenizer(
        list(ds["text"]), truncation=True, max_length=max_length, padding="max_length", return_tensors="pt"
    )
    mask = enc["attention_mask"]
    return Examples(enc["input_ids"], mask, torch.tensor(ds["label"], dtype=torch.long), mask.sum(dim=1))


def batches(data: Examples, batch_size: int, order: torch.Tensor | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Model inputs for consecutive slices of ``order`` (default: as stored), cut to the longest example."""
    order = torch.arange(len(data)) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(data.lengths[idx].max())
        yield {
            "input_ids": data.input_ids[idx, :width],
            "attention_mask": data.attention_mask[idx, :width],
            "labels": data.labels[idx],
        }


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))


def _step_batches(data: Examples, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[dict]:
    """Exactly ``steps`` batches, reshuffling each time the data runs out."""
    done = 0
    while done < steps:
        for batch in batches(data, batch_size, torch.randperm(len(data), generator=generator)):
            yield batch
            done += 1
            if done == steps:
                return


def train_steps(
    model: nn.Module, data: Examples, *, steps: int, batch_size: int, lr: float, weight_decay: float, seed: int
) -> tuple[float, int]:
    """Run ``steps`` AdamW steps on ``data``; return (mean training loss, examples seen).

    ``seed`` fixes shuffling and dropout, so a client's round is reproducible (resume relies on it).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    total, seen = 0.0, 0
    for batch in _step_batches(data, batch_size, steps, generator):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total += loss.detach().item() * len(batch["labels"])
        seen += len(batch["labels"])
    model.eval()
    return total / max(seen, 1), seen


@torch.inference_mode()
def evaluate(model: nn.Module, data: Examples, batch_size: int) -> dict[str, float]:
    """Mean cross-entropy and accuracy over ``data``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for batch in batches(data, batch_size):
        out = model(**batch)
        loss_sum += float(out.loss) * len(batch["labels"])
        correct += int((out.logits.argmax(dim=-1) == batch["labels"]).sum())
    n = max(len(data), 1)
    return {"loss": loss_sum / n, "accuracy": correct / n, "num-examples": len(data)}
