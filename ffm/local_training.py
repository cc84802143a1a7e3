"""Local training: the steps a client (or the centralized baseline) takes in one round.

The loop takes its optimizer, learning-rate schedule and objective from outside, with two hooks that
algorithms plug into without subclassing anything: ``penalties`` (extra loss terms such as FedProx's
proximal term or, later, EWC) and ``grad_hooks`` (gradient processing after backward, such as a SCAFFOLD
correction or DP-SGD). ``train.max_grad_norm`` clips each step's gradient.

The learning-rate schedule spans the whole run, not one round: a client in round r continues it from
step (r - 1) * S of rounds * S (S = its local steps per round), so warmup happens once at the start and the
decay reaches its end in the last round, for every mode alike (transformers' schedulers restart at 0).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

__all__ = ["GradHook", "Penalty", "lr_factor", "make_optimizer", "round_lr_sum", "run_scheduler", "train_steps"]

Penalty = Callable[[], torch.Tensor]  # an extra loss term computed from the model's current parameters
GradHook = Callable[[nn.Module], None]


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total`` (transformers' formulas, warmup first)."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule '{kind}' (constant | linear | cosine)")


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, kind: str = "adamw", momentum: float = 0.0
) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters (fresh each round: optimizer state never travels)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{kind}' (adamw | sgd)")


def _round_factors(
    kind: str, warmup_ratio: float, steps: int, server_round: int, rounds: int
) -> Callable[[int], float]:
    total = steps * rounds
    offset = steps * (server_round - 1)
    warmup = round(warmup_ratio * total)
    return lambda i: lr_factor(offset + i, total, warmup, kind)


def run_scheduler(
    optimizer: torch.optim.Optimizer, *, kind: str, warmup_ratio: float, steps: int, server_round: int, rounds: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The run-long schedule positioned at this round's ``steps`` (see the module docstring)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _round_factors(kind, warmup_ratio, steps, server_round, rounds))


def round_lr_sum(lr: float, *, kind: str, warmup_ratio: float, steps: int, server_round: int, rounds: int) -> float:
    """Sum of the learning rates of this round's ``steps`` under the run-long schedule.

    SCAFFOLD's control variate and FedNova's normalization divide a client's update by it: for plain SGD the
    update is this sum times the mean gradient (momentum beta scales it by 1 / (1 - beta)).
    """
    factor = _round_factors(kind, warmup_ratio, steps, server_round, rounds)
    return lr * sum(factor(i) for i in range(steps))


def train_steps(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    objective: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    penalties: Sequence[Penalty] = (),
    grad_hooks: Sequence[GradHook] = (),
    max_grad_norm: float = 0.0,
    bf16: bool = False,
) -> tuple[float, int]:
    """One optimizer step per batch; return (mean objective loss, examples seen). Penalties are not in the mean.

    ``bf16``: the forward pass under CPU bf16 autocast (weights and gradients stay fp32; ~1.25x the tokens/s of
    SmolLM2 + LoRA on a CPU with avx512_bf16, bench/results/causal_speed.md)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    total, seen = 0.0, 0
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = objective(model, batch)
        full = loss + sum(term() for term in penalties) if penalties else loss
        full.backward()
        for hook in grad_hooks:
            hook(model)
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        n = len(next(iter(batch.values())))
        total += loss.detach().item() * n
        seen += n
    model.eval()
    return total / max(seen, 1), seen
