"""FedKSeed's client half (Qin et al. 2024, arXiv 2312.06353): full-parameter zeroth-order tuning from K shared
seeds, so that a round's upload is a few bytes per local step and every party can rebuild the global model.

**A local step.** Draw one of the K seeds (uniformly, or, FedKSeed-Pro, by how much each seed has moved the
model so far), take that seed's direction z ~ N(0, I) over every trainable parameter, measure the loss at
w + eps z and w - eps z on one batch (two forward passes, no backward: the model in eval mode, so both see the
same function) and step w <- w - lr g z with g = (L+ - L-) / (2 eps). The client records (seed index, lr g).
A copy of the trainable parameters holds w while the model is perturbed, so the step is exactly
``w.add_(z, alpha=-lr g)`` and replaying the record reproduces the client's parameters bit for bit.

**On the wire.** Up: the records, two arrays of ``local_steps`` entries (8 bytes a step). Down: the server's
history, one sparse row per finished round (the weighted sum, per seed, of the clients' steps:
``G_r[j] = sum_i p_i sum_{t: j_it = j} lr_it g_it``), 12 bytes per used seed per round. A node rebuilds the
round's global model from the initial one by replaying the rows it has not applied yet, ``w -= G_r[j] z_j``;
the server does the same to its own copy, so everyone holds the same model and no parameter ever travels.
The weighted sum of the clients' steps is FedAvg of their full models, written in seed space.

The server half is :mod:`ffm.methods.kseed_aggregation`; :class:`ffm.methods.kseed.KSeed` wires both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

__all__ = [
    "HISTORY_INDEX",
    "HISTORY_ROUND",
    "HISTORY_VALUE",
    "STEP_COEF",
    "STEP_INDEX",
    "Replica",
    "apply_row",
    "direction",
    "history_rows",
    "seed_probabilities",
    "seed_values",
    "zeroth_order_steps",
]

STEP_INDEX, STEP_COEF = "kseed-index", "kseed-step"  # a reply: the seed of each local step, and lr * g
HISTORY_ROUND, HISTORY_INDEX, HISTORY_VALUE = "kseed-round", "kseed-index", "kseed-value"  # the server's rows


def seed_values(job_seed: int, k: int) -> list[int]:
    """The K shared seeds: a pure function of the job's seed, the same on every party."""
    rng = np.random.default_rng([job_seed, 0x6B5E])
    return [int(s) for s in rng.integers(0, 2**62, size=k)]


def _trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return sorted((name, p) for name, p in model.named_parameters() if p.requires_grad)


def direction(seed: int, params: list[tuple[str, torch.Tensor]]) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Seed ``seed``'s direction, one parameter at a time (name order): (parameter, its slice of z)."""
    generator = torch.Generator().manual_seed(seed)
    for _, param in params:
        yield param, torch.randn(param.shape, generator=generator, dtype=param.dtype)


@torch.no_grad()
def apply_row(model: nn.Module, row: dict[int, float], seeds: list[int]) -> None:
    """w -= G[j] z_j for every seed j of one history row (in seed order)."""
    params = _trainable(model)
    for j in sorted(row):
        for param, z in direction(seeds[j], params):
            param.add_(z, alpha=-row[j])


def seed_probabilities(rows: list[dict[int, float]], k: int) -> np.ndarray:
    """FedKSeed-Pro's sampling distribution: a softmax over each seed's mean |G| in the rows where it moved the
    model, scaled to [0, 1] (seeds never used score 0); uniform before the first row."""
    if not rows:
        return np.full(k, 1.0 / k)
    total, count = np.zeros(k), np.zeros(k)
    for row in rows:
        for j, value in row.items():
            total[j] += abs(value)
            count[j] += 1
    amplitude = np.divide(total, count, out=np.zeros(k), where=count > 0)
    spread = amplitude.max() - amplitude.min()
    score = (amplitude - amplitude.min()) / spread if spread > 0 else np.zeros(k)
    weights = np.exp(score)
    return weights / weights.sum()


def history_rows(rounds: np.ndarray, index: np.ndarray, value: np.ndarray) -> list[dict[int, float]]:
    """The sparse history (one entry per used seed per finished round) back into one row per round."""
    if len(rounds) == 0:
        return []
    rows: list[dict[int, float]] = [{} for _ in range(int(rounds.max()))]
    for r, j, v in zip(rounds.tolist(), index.tolist(), value.tolist(), strict=True):
        rows[r - 1][int(j)] = float(v)
    return rows


@torch.no_grad()
def zeroth_order_steps(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    objective: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    *,
    seeds: list[int],
    probabilities: np.ndarray,
    eps: float,
    lr_at: Callable[[int], float],
    choice: np.random.Generator,
) -> tuple[list[int], list[float], float, int, float]:
    """Zeroth-order steps, one per batch: (seed indices, lr * g per step, mean loss, examples seen, seconds)."""
    model.eval()  # both forward passes of a step must see the same function (no dropout)
    params = _trainable(model)
    kept = [p.detach().clone() for _, p in params]  # w, while the model holds w +- eps z
    indices, steps, losses, seen = [], [], [], 0
    started = time.perf_counter()
    for step, batch in enumerate(batches):
        j = int(choice.choice(len(seeds), p=probabilities))
        for sign in (1.0, -1.0):
            for (param, z), w in zip(direction(seeds[j], params), kept, strict=True):
                torch.add(w, z, alpha=sign * eps, out=param)
            value = float(objective(model, batch))
            losses.append(value)
            if sign > 0:
                plus = value
        g = (plus - value) / (2 * eps)
        coef = float(np.float32(lr_at(step) * g)) if math.isfinite(g) else 0.0  # as it travels (float32)
        for (param, z), w in zip(direction(seeds[j], params), kept, strict=True):
            w.add_(z, alpha=-coef)
            param.copy_(w)
        indices.append(j)
        steps.append(coef)
        seen += len(next(iter(batch.values())))
    return indices, steps, float(np.mean(losses)) if losses else 0.0, seen, time.perf_counter() - started


class Replica:
    """A node's copy of the global model at the start of its last synced round: the trainable parameters,
    rebuilt by replaying history rows, and restored before every client's steps (in simulation the model is
    shared by the virtual clients)."""

    def __init__(self) -> None:
        self.applied: list[dict[int, float]] = []  # the rows this replica holds, in order
        self.state: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def sync(self, model: nn.Module, initial: dict[str, torch.Tensor], rows: list[dict[int, float]],
             seeds: list[int]) -> None:
        """Put the global model of round ``len(rows) + 1`` into ``model``: replay only the rows not yet applied
        (from the initial state when the history is shorter than what this replica holds: another run)."""
        params = dict(_trainable(model))
        if self.state is None or rows[: len(self.applied)] != self.applied:  # another run's history
            self.state, self.applied = {k: initial[k].clone() for k in params}, []
        for name, param in params.items():
            param.copy_(self.state[name])
        for row in rows[len(self.applied):]:
            apply_row(model, row, seeds)
        if len(rows) > len(self.applied):
            self.state = {name: param.detach().clone() for name, param in params.items()}
            self.applied = list(rows)
