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
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ffm.settings import option, require

__all__ = ["GradHook", "Penalty", "TokenCount", "TrainConfig", "load_optimizer_state", "lr_factor", "make_optimizer",
           "optimizer_state", "round_lr_factors", "round_lr_sum", "run_scheduler", "straggler_steps",
           "train_steps"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class TrainConfig:
    """How each party trains locally in a round, and how models are evaluated."""

    optimizer: str = option("adamw", "local optimizer (SCAFFOLD and FedNova assume plain SGD steps)",
                            choices=OPTIMIZERS)
    lr: float = option(1e-3, "learning rate of the local optimizer (its peak, under a scheduler)")
    momentum: float = option(0.0, "SGD momentum (train.optimizer=sgd)")
    weight_decay: float = option(0.0, "weight decay of the local optimizer (on matrices; not biases and norms)")
    beta2: float = option(0.999, "AdamW's second-moment decay (nanoGPT's small models: 0.99)")
    batch_size: int = option(16, "local batch size")
    local_epochs: int = option(1, "passes over the local data per round (used when local_steps is 0)")
    local_steps: int = option(0, "optimizer steps per round per client (0 = use local_epochs)")
    eval_batch_size: int = option(64, "batch size for evaluation")
    eval_parties: bool = option(
        False, "at the end, evaluate the final model(s) on every party's validation split, on a sample of the "
        "training data (the overfitting gap) and on the unseen parties; into summary.json (ffm compare sets it)"
    )
    eval_train_examples: int = option(512, "eval_parties: training examples sampled for the train metric (0 = all)")
    scheduler: str = option("constant", "learning-rate schedule over the whole run (every round continues it)",
                            choices=SCHEDULES)
    warmup_ratio: float = option(0.0, "share of the run's steps spent warming the learning rate up from 0, in "
                                 "[0, 1)")
    min_lr_ratio: float = option(0.0, "where a decaying schedule ends, as a share of train.lr (nanoGPT: 0.1)")
    max_grad_norm: float = option(0.0, "clip each step's gradient to this L2 norm (0 = no clipping)")
    precision: str = option("fp32", "local training's forward pass: fp32, or bf16 (CPU autocast; fp32 weights and "
                            "gradients; faster where the CPU has bf16 instructions, e.g. avx512_bf16 / AMX)",
                            choices=("fp32", "bf16"))
    steps_spread: float = option(
        0.0, "stragglers: each client's steps in a round drawn uniformly from [(1 - spread) S, S], in [0, 1)"
    )
    persistent_optimizer: bool = option(
        False, "keep each client's optimizer state (AdamW's moments, SGD's momentum) in its node state from round "
        "to round, as DiLoCo's inner optimizer does (never sent; 2 tensors per trainable parameter of memory)")

    def __post_init__(self) -> None:
        require(self.lr > 0.0, "train.lr must be > 0")
        require(self.batch_size >= 1 and self.eval_batch_size >= 1, "train.batch_size/eval_batch_size must be >= 1")
        require(self.local_epochs >= 1 or self.local_steps >= 1, "set train.local_epochs or train.local_steps >= 1")
        require(self.local_steps >= 0, "train.local_steps must be >= 0")
        require(0.0 <= self.warmup_ratio < 1.0, f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        require(self.max_grad_norm >= 0.0, "train.max_grad_norm must be >= 0 (0 = no clipping)")
        require(0.0 <= self.momentum < 1.0, f"train.momentum must be in [0, 1), got {self.momentum}")
        require(0.0 < self.beta2 < 1.0 and 0.0 <= self.min_lr_ratio <= 1.0,
                "train.beta2 must be in (0, 1) and train.min_lr_ratio in [0, 1]")
        require(0.0 <= self.steps_spread < 1.0, f"train.steps_spread must be in [0, 1), got {self.steps_spread}")

Penalty = Callable[[], torch.Tensor]  # an extra loss term computed from the model's current parameters
GradHook = Callable[[nn.Module], None]


class TokenCount:
    """Counts the tokens (attention-mask ones; examples for inputs without a mask) of the batches it passes on.
    A batch of pairs carries a mask per side (``chosen_attention_mask``, ``rejected_attention_mask``): both count,
    since the model reads both."""

    def __init__(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        self.batches, self.tokens = batches, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.batches:
            masks = [v for k, v in batch.items() if k == "attention_mask" or k.endswith("_attention_mask")]
            self.tokens += sum(int(m.sum()) for m in masks) if masks else len(next(iter(batch.values())))
            yield batch


def lr_factor(step: int, total: int, warmup: int, kind: str, floor: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total`` (transformers' formulas, warmup first); a
    decaying schedule ends at ``floor`` instead of 0 (nanoGPT's min_lr / learning_rate)."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return floor + (1.0 - floor) * max(0.0, 1.0 - progress)
    if kind == "cosine":
        return floor + (1.0 - floor) * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule '{kind}' (constant | linear | cosine)")


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, kind: str = "adamw", momentum: float = 0.0,
    beta2: float = 0.999,
) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters (fresh each round: optimizer state never travels).

    Weight decay applies to matrices only, not to biases and norm gains (1-D parameters), as nanoGPT and
    Hugging Face's Trainer do."""
    params: list = [p for p in model.parameters() if p.requires_grad]
    if weight_decay > 0:
        params = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, beta2))
    raise ValueError(f"unknown optimizer '{kind}' (adamw | sgd)")


def round_lr_factors(
    kind: str, warmup_ratio: float, steps: int, server_round: int, rounds: int, min_lr_ratio: float = 0.0
) -> Callable[[int], float]:
    """Step i of this round -> its multiplier of the peak learning rate under the run-long schedule."""
    total = steps * rounds
    offset = steps * (server_round - 1)
    warmup = round(warmup_ratio * total)
    return lambda i: lr_factor(offset + i, total, warmup, kind, min_lr_ratio)


def run_scheduler(
    optimizer: torch.optim.Optimizer, *, kind: str, warmup_ratio: float, steps: int, server_round: int, rounds: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The run-long schedule positioned at this round's ``steps`` (see the module docstring)."""
    factors = round_lr_factors(kind, warmup_ratio, steps, server_round, rounds, min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def round_lr_sum(lr: float, *, kind: str, warmup_ratio: float, steps: int, server_round: int, rounds: int,
                 min_lr_ratio: float = 0.0) -> float:
    """Sum of the learning rates of this round's ``steps`` under the run-long schedule.

    SCAFFOLD's control variate and FedNova's normalization divide a client's update by it: for plain SGD the
    update is this sum times the mean gradient (momentum beta scales it by 1 / (1 - beta)).
    """
    factor = round_lr_factors(kind, warmup_ratio, steps, server_round, rounds, min_lr_ratio)
    return lr * sum(factor(i) for i in range(steps))


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat tensors ``<parameter index>.<name>`` (a record's content)."""
    out = {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            out[f"{index}.{name}"] = value.detach().clone() if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> bool:
    """Put :func:`optimizer_state`'s tensors back; False (and nothing loaded) when they do not fit the parameters
    (a head that grew since), so the optimizer starts fresh."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    for index, values in state.items():
        if index >= len(params) or any(v.ndim and v.shape != params[index].shape for v in values.values()):
            return False
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    return True


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


def straggler_steps(steps: int, spread: float, seed: int) -> int:
    """A straggler's share of its steps this round: uniform in [ceil((1 - spread) * steps), steps]."""
    if spread <= 0.0:
        return steps
    low = max(1, math.ceil((1.0 - spread) * steps))
    return random.Random(seed).randint(low, steps)
