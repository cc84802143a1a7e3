"""Encoded examples of one split as tensors, and the batches cut from them.

Examples are encoded once per data owner and kept as padded tensors; each batch is cut to its longest
example, so a short-text data set does not pay for ``model.max_length``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["Examples", "batches", "step_batches", "steps_per_epoch"]


@dataclass
class Examples:
    """Model inputs of N examples: each tensor (N, ...); ``sequence_keys`` are (N, T) and cut per batch."""

    tensors: dict[str, torch.Tensor]
    lengths: torch.Tensor  # (N,) real tokens per example
    sequence_keys: tuple[str, ...] = ("input_ids", "attention_mask")

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


def batches(data: Examples, batch_size: int, order: torch.Tensor | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Model inputs for consecutive slices of ``order`` (default: as stored), cut to the longest example."""
    order = torch.arange(len(data)) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(data.lengths[idx].max())
        yield {
            key: value[idx, :width] if key in data.sequence_keys else value[idx]
            for key, value in data.tensors.items()
        }


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Batches in one pass over ``num_examples`` (at least one)."""
    return max(1, math.ceil(num_examples / batch_size))


def step_batches(data: Examples, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[dict]:
    """Exactly ``steps`` shuffled batches, reshuffling each time the data runs out."""
    done = 0
    while done < steps:
        for batch in batches(data, batch_size, torch.randperm(len(data), generator=generator)):
            yield batch
            done += 1
            if done == steps:
                return
