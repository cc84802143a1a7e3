"""The growing classification head of a class-incremental stream.

The model is built with every class of the stream (so its head's rows come from the job's seed, the same
on every node); the travelling state carries only the rows of the classes seen so far. At a new stage the
server appends the new classes' rows, taken from that initial head, to the global state; a node that
receives a state with more rows than its model resizes the head before loading it. Rows are the first
dimension of the head's weight and bias (``classifier`` in BERT/ViT, ``score`` in decoders).
"""

from __future__ import annotations

import torch
from torch import nn

from ffm.models.head import head_keys

__all__ = ["fit_head", "grow_head", "head_keys", "shrink_head"]


def shrink_head(state: dict[str, torch.Tensor], keys: list[str], rows: int) -> dict[str, torch.Tensor]:
    """The state with only the first ``rows`` classes in its head."""
    return {k: v[:rows].clone() if k in keys else v for k, v in state.items()}


def grow_head(state: dict[str, torch.Tensor], full: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """The state with its head extended to ``rows`` classes; new rows from the initial head ``full``."""
    out = dict(state)
    for key, initial in full.items():
        have = state[key].shape[0]
        if have < rows:
            out[key] = torch.cat([state[key], initial[have:rows].to(state[key].dtype)])
    return out


@torch.no_grad()
def fit_head(model: nn.Module, state: dict[str, torch.Tensor], keys: list[str]) -> None:
    """Resize the model's head parameters among ``keys`` to the shapes ``state`` has (before loading it)."""
    params = dict(model.named_parameters())
    rows = None
    for key in keys:
        if key in state and key in params and params[key].shape != state[key].shape:
            params[key].data = torch.zeros_like(state[key], dtype=params[key].dtype)
            rows = state[key].shape[0]
    if rows is None:
        return
    for module in model.modules():  # the loss reshapes logits by num_labels (BertForSequenceClassification)
        if hasattr(module, "num_labels") and isinstance(module.num_labels, int):
            module.num_labels = rows
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_labels"):
            config.num_labels = rows
