"""An audited epsilon: canary clients and the one-run audit of Steinke, Nasr and Jagielski (NeurIPS 2023).

The accountant gives an upper bound on epsilon; an audit gives a lower bound, measured on the trained run, so a
bug in the mechanism or the accounting shows as a lower bound above the upper one. With ``privacy.canaries=m``
a simulation inserts m canary clients, each present with probability 1/2 by a seeded coin flip. A present canary
is a client like the others (sampled, clipped, noised), except that its update is always its own fixed random
direction u_i at the full clipping norm C: the strongest update a client-level guarantee must hide. It claims
``privacy.canary_examples`` examples (1 by default): a run without DP weighs the mean by examples, and a canary
lighter than the real clients is easier to hide than any of them. After the
run, ``ffm audit RUN_DIR --canaries`` scores each canary by how far the released global states moved along its
direction, s_i = sum over rounds of <theta_t - theta_(t-1), u_i> (every round's model is a release), guesses the
top quarter present and the bottom quarter absent, and turns the number of correct guesses into the largest
epsilon that (epsilon, delta)-DP rules out at 95% confidence (the paper's Theorem 1 / its reference code).

Sanity checks that can fail (tested): without noise the audit finds a clearly positive lower bound; with noise it
must never exceed the accountant's epsilon.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from ffm.keys import ARRAYS_KEY, CLIENT_KEY, METRICS_KEY, PARTITION_ID, Salt, derive_seed
from ffm.privacy.mechanism import Mechanism
from ffm.settings import CHECKS, Job, option, require

__all__ = ["CANARIES", "CANARY", "CanaryConfig", "audit_epsilon", "canary_direction",
           "canary_reply", "canary_scores", "present_canaries"]

CANARY = "canary"  # a node config key: this node is canary number i (it holds no data)


@dataclass
class CanaryConfig:
    """Canary clients for the one-run privacy audit (simulation only)."""

    canaries: int = option(0, "one-run audit of client-level DP: insert this many canary clients, each present with "
                           "probability 1/2; a present canary's update is its own random direction at the clipping "
                           "norm (ffm audit RUN_DIR --canaries measures a lower bound on epsilon)")
    canary_examples: int = option(1, "the examples a canary claims, its weight in a mean weighted by examples (a run "
                                  "without DP; DP-FedAvg weighs every client alike): a canary as heavy as a real "
                                  "client claims as many as a client holds")

    def __post_init__(self) -> None:
        require(self.canaries >= 0, "privacy.canaries must be >= 0")
        require(self.canary_examples >= 1, "privacy.canary_examples must be >= 1")


def present_canaries(job: Job) -> list[int]:
    """The canaries (0..m-1) whose coin flip put them in the federation."""
    return [i for i in range(job.privacy.canaries)
            if random.Random(derive_seed(job.seed, 0, Salt.CANARY, i)).random() < 0.5]


def canary_direction(job: Job, index: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Canary ``index``'s unit direction over the trainable state (keys in sorted order), float64."""
    size = sum(math.prod(s) for s in shapes.values())
    generator = torch.Generator().manual_seed(derive_seed(job.seed, 0, Salt.CANARY, index))
    flat = torch.randn(size, generator=generator, dtype=torch.float64)
    flat /= flat.norm()
    out, start = {}, 0
    for key in sorted(shapes):
        count = math.prod(shapes[key])
        out[key] = flat[start : start + count].reshape(shapes[key])
        start += count
    return out


def canary_reply(msg: Message, job: Job, index: int, party: int) -> Message:
    """Canary ``index``'s reply: to training, the received state + C u_i; to anything else, an error (a canary
    holds no data). The Flower mod around it is ``ffm.client.canary_mod``."""
    from ffm.privacy.client_dp import DP_WEIGHT_KEY

    if msg.metadata.message_type != "train":
        from flwr.app import Error

        return Message(Error(code=0, reason="a canary client holds no data"), reply_to=msg)
    received = msg.content[ARRAYS_KEY].to_torch_state_dict()
    floating = {k: tuple(v.shape) for k, v in received.items() if v.is_floating_point()}
    direction = canary_direction(job, index, floating)
    sent = {k: (v.double() + job.privacy.clipping_norm * direction[k]).to(v.dtype) if k in direction else v
            for k, v in received.items()}
    return Message(RecordDict({ARRAYS_KEY: ArrayRecord(sent),
                               METRICS_KEY: MetricRecord({"num-examples": job.privacy.canary_examples, DP_WEIGHT_KEY: 1,
                                                           "canary": 1}),
                               CLIENT_KEY: ConfigRecord({PARTITION_ID: party})}), reply_to=msg)


def canary_scores(states: list[dict[str, torch.Tensor]], job: Job) -> np.ndarray:
    """Each canary's score from the released global states (the initial one first): their movement along its
    direction, summed over every round."""
    initial = states[0]
    shapes = {k: tuple(v.shape) for k, v in initial.items() if v.is_floating_point()}
    moves = [{k: states[t][k].double() - states[t - 1][k].double() for k in shapes} for t in range(1, len(states))]
    total = {k: sum(m[k] for m in moves) for k in shapes}  # the sum over rounds of the per-round inner products
    return np.array([float(sum((total[k] * u[k]).sum() for k in shapes))
                     for u in (canary_direction(job, i, shapes) for i in range(job.privacy.canaries))])


def _p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[at least v of r guesses right] under (eps, delta)-DP (Steinke, Nasr, Jagielski 2023, Thm 1)."""
    from scipy.stats import binom

    q = 1 / (1 + math.exp(-eps))
    beta = binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1.0)


def audit_epsilon(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon that r guesses with v right rule out for (epsilon, delta)-DP at ``confidence``."""
    p = 1 - confidence
    if r == 0 or _p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    low, high = 0.0, 1.0
    while _p_value(m, r, v, high, delta) < p and high < 100:
        high += 1
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if _p_value(m, r, v, middle, delta) < p else (low, middle)
    return low


def audit(job: Job, states: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """The one-run audit from every released global state (the initial one first): guesses, correct ones, the
    epsilon lower bound (``ffm.audit.canary_audit_run`` reads them from a run directory)."""
    scores = canary_scores(states, job)
    present = set(present_canaries(job))
    m = len(scores)
    k = max(1, m // 4)
    order = np.argsort(-scores)
    guessed_in, guessed_out = order[:k], order[-k:]
    correct = sum(int(i in present) for i in guessed_in) + sum(int(i not in present) for i in guessed_out)
    from ffm.privacy.client_dp import epsilon

    rounds = job.federation.rounds
    bound = audit_epsilon(m, 2 * k, correct, job.privacy.delta)
    return {"canaries": m, "present": len(present), "guesses": 2 * k, "correct": correct,
            "epsilon_lower_bound": bound, "confidence": 0.95, "delta": job.privacy.delta,
            "epsilon_accountant": None if job.privacy.clipping == "none" else epsilon(job, rounds),
            "score_present_mean": float(np.mean([scores[i] for i in present])) if present else None,
            "score_absent_mean": float(np.mean([scores[i] for i in range(m) if i not in present]))
            if len(present) < m else None}


class Canaries(Mechanism):
    """The canary clients' keys (the clients themselves are added by the simulation, their replies by a mod)."""

    config = CanaryConfig


CANARIES = Canaries()


def check_canaries(job: Job) -> None:
    """Canaries are a simulation's audit: they need a federated run whose every round is checkpointed."""
    if not job.privacy.canaries:
        return
    require(str(job.runtime) == "simulation", "privacy.canaries audits a simulation (runtime=simulation)")
    require(job.mode.aggregates, f"privacy.canaries audits a federation; mode={job.mode} does not aggregate")
    require(job.checkpoint.keep_last == 0, "privacy.canaries reads every round's checkpoint: checkpoint.keep_last=0")


CHECKS.register("canaries_are_a_simulation_audit", check_canaries)
