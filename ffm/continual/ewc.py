"""Elastic weight consolidation (Kirkpatrick et al., 2017), client-side and online.

When a client enters a new stage it computes the diagonal empirical Fisher of the model it received (the
global model at the end of the finished stage) on a sample of that stage's examples, adds it to the Fisher it
kept (online EWC; a grown head's new rows start at zero) and keeps the received parameters as the anchor, both
in its node state. Local training then adds ``lambda / 2 * sum F (theta - theta*)^2`` through the
local-training hook. Nothing of it travels: the Fisher describes the client's private data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from torch import nn

from ffm.tasks.examples import Examples, batches

__all__ = ["ANCHOR_KEY", "FISHER_KEY", "consolidate", "ewc_penalty", "fisher_diagonal"]

FISHER_KEY = "ewc-fisher"
ANCHOR_KEY = "ewc-anchor"
META_KEY = "ewc-meta"


def fisher_diagonal(model: nn.Module, loss: Callable[[nn.Module, dict], torch.Tensor], data: Examples,
                    samples: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Mean squared per-example gradient of each trainable parameter over ``samples`` examples of ``data``
    (eval mode: no dropout, so the computation draws no random numbers)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    order = torch.randperm(len(data), generator=generator)[:samples]
    model.eval()
    for batch in batches(data, 1, order):
        model.zero_grad(set_to_none=True)
        loss(model, batch).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    return {name: f / max(len(order), 1) for name, f in fisher.items()}


def _added(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    if old.shape != new.shape:  # the head grew: its new rows have no Fisher yet
        old = torch.cat([old, torch.zeros((new.shape[0] - old.shape[0], *old.shape[1:]), dtype=old.dtype)])
    return old + new


def consolidate(state: RecordDict, model: nn.Module, loss: Callable[[nn.Module, dict], torch.Tensor],
                finished: tuple[int, Examples], samples: int, generator: torch.Generator,
                head: tuple[list[str], int] | None = None) -> None:
    """On a node's first round after finishing stage ``finished[0]``: add that stage's Fisher, re-anchor.

    ``head`` = (head keys, rows of the finished stage): a grown head's rows of classes that have not been
    trained yet are neither anchored nor weighted."""
    stage, data = finished
    done = int(state[META_KEY]["stage"]) if META_KEY in state.metric_records else -1
    if stage <= done:
        return
    new = fisher_diagonal(model, loss, data, samples, generator)
    anchor = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    if head is not None:
        keys, rows = head
        new = {name: f[:rows] if name in keys else f for name, f in new.items()}
        anchor = {name: a[:rows] if name in keys else a for name, a in anchor.items()}
    if FISHER_KEY in state.array_records:
        old = state[FISHER_KEY].to_torch_state_dict()
        new = {name: _added(old[name], f) if name in old else f for name, f in new.items()}
    state[FISHER_KEY] = ArrayRecord(new)
    state[ANCHOR_KEY] = ArrayRecord(anchor)
    state[META_KEY] = MetricRecord({"stage": stage})


def ewc_penalty(state: RecordDict, model: nn.Module, weight: float) -> Callable[[], torch.Tensor] | None:
    """The penalty term of the node's kept Fisher and anchor (None before its first finished stage)."""
    if FISHER_KEY not in state.array_records:
        return None
    fisher = state[FISHER_KEY].to_torch_state_dict()
    anchor = state[ANCHOR_KEY].to_torch_state_dict()
    params = [(p, fisher[name], anchor[name]) for name, p in model.named_parameters()
              if p.requires_grad and name in fisher]

    def penalty() -> torch.Tensor:
        total = sum(((f * (p[: f.shape[0]] - a) ** 2).sum() for p, f, a in params), torch.zeros(()))
        return 0.5 * weight * total

    return penalty
