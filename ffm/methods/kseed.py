"""FedKSeed (Qin et al. 2024): full-parameter tuning by zeroth-order steps along K shared seeds; what travels
is a few bytes per local step up and the sparse history of the rounds down, never a parameter. See
:mod:`ffm.methods.kseed_federation` (client half, the wire format) and :mod:`ffm.methods.kseed_aggregation`
(server half).

Written here rather than taken from a library: FS-LLM and FATE-LLM ship FedKSeed inside their own trainers,
and peft has no zeroth-order method; the optimizer itself is MeZO's two-point estimate (Malladi et al. 2023).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from ffm.keys import ARRAYS_KEY, CLIENT_KEY, CONFIG_KEY, METRICS_KEY, PARTITION_ID, SERVER_ROUND, Salt, derive_seed
from ffm.local_training import TokenCount, round_lr_factors, straggler_steps
from ffm.methods.base import ClientRound, MethodConfig
from ffm.methods.full import Full
from ffm.methods.kseed_aggregation import KSeedAggregation, read_history
from ffm.methods.kseed_federation import (
    STEP_COEF,
    STEP_INDEX,
    Replica,
    seed_probabilities,
    seed_values,
    zeroth_order_steps,
)
from ffm.settings import CHECKS, Job, option, require
from ffm.tasks import step_batches

__all__ = ["KSeed", "KSeedConfig"]


@dataclass
class KSeedConfig(MethodConfig):
    """FedKSeed's keys: how many shared seeds, the perturbation, and FedKSeed-Pro's seed sampling."""

    name: str = "fedkseed"
    seeds: int = option(1024, "K: the shared seeds every local step draws its direction from (the paper: 1024-4096)")
    perturbation: float = option(1e-3, "eps of the two-point estimate (L(w + eps z) - L(w - eps z)) / (2 eps)")
    pro: bool = option(False, "FedKSeed-Pro: draw seeds by how much each has moved the model so far (softmax over "
                       "their mean |step|), not uniformly")

    def __post_init__(self) -> None:
        require(self.seeds >= 1, "method.seeds must be at least 1")
        require(self.perturbation > 0, "method.perturbation must be > 0")


_REPLICAS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a workspace's model -> its Replica


class KSeedRound(ClientRound):
    """The client half: rebuild the round's model from the history, take zeroth-order steps, reply the records."""

    def __init__(self, cfg: KSeedConfig) -> None:
        self.cfg = cfg

    def _sync(self, workspace: Any, msg: Message) -> list[dict[int, float]]:
        rows = read_history(msg.content[ARRAYS_KEY])
        replica = _REPLICAS.setdefault(workspace.model, Replica())
        replica.sync(workspace.model, workspace.initial_state, rows, seed_values(workspace.job.seed, self.cfg.seeds))
        return rows

    def load(self, workspace: Any, msg: Message, context: Context) -> None:
        self._sync(workspace, msg)

    def train(self, job: Job, workspace: Any, index: int, party: int, msg: Message, context: Context) -> RecordDict:
        rows = self._sync(workspace, msg)
        server_round = int(msg.content[CONFIG_KEY][SERVER_ROUND])
        seed = derive_seed(job.seed, server_round, Salt.LOCAL_TRAINING, party)
        torch.manual_seed(seed)
        data = workspace.examples("train", index)
        steps = straggler_steps(workspace.local_steps(index), job.train.steps_spread, seed)
        batches = TokenCount(step_batches(data, job.train.batch_size, steps, torch.Generator().manual_seed(seed)))
        factor = round_lr_factors(job.train.scheduler, job.train.warmup_ratio, steps, server_round,
                                  job.federation.rounds, job.train.min_lr_ratio)
        probabilities = (seed_probabilities(rows, self.cfg.seeds) if self.cfg.pro
                         else np.full(self.cfg.seeds, 1.0 / self.cfg.seeds))
        indices, coefs, loss, seen, seconds = zeroth_order_steps(
            workspace.model, batches, workspace.task.party_objective(data), seeds=seed_values(job.seed, self.cfg.seeds),
            probabilities=probabilities, eps=self.cfg.perturbation, lr_at=lambda i: job.train.lr * factor(i),
            choice=np.random.default_rng(seed))
        metrics = {"num-examples": len(data), "train-loss": loss, "examples-seen": seen, "local-steps": steps,
                   "tokens-seen": batches.tokens, "train-seconds": seconds}
        records = ArrayRecord({STEP_INDEX: Array(np.array(indices, dtype=np.int32)),
                               STEP_COEF: Array(np.array(coefs, dtype=np.float32))})
        return RecordDict({ARRAYS_KEY: records, METRICS_KEY: MetricRecord(metrics),
                           CLIENT_KEY: ConfigRecord({PARTITION_ID: party})})


class KSeed(Full):
    """Every parameter trains (as in full fine-tuning), by zeroth-order steps from shared seeds; none travels."""

    config = KSeedConfig

    @property
    def needs_each_update(self) -> bool:
        return True  # the server reads each client's step records: no secure sum, no streaming mean

    def client_round(self) -> ClientRound:
        return KSeedRound(self.cfg)

    def wrap_strategy(self, strategy: Strategy, job: Job) -> Strategy:
        # a reply holds one record per local step; a straggler takes fewer, never more
        most = job.train.local_steps or 1 << 20
        return KSeedAggregation(strategy, seeds=seed_values(job.seed, self.cfg.seeds), max_steps=most)


def check_kseed(job: Job) -> None:
    """FedKSeed replaces the update itself: what reads or changes a state update cannot run with it."""
    if job.method.name != "fedkseed":
        return
    require(not job.mode.keeps_party_models, f"method.name=fedkseed needs mode=federated or centralized (mode="
            f"{job.mode} keeps a model per party, which one shared history cannot describe)")
    require(job.strategy.name == "fedavg", f"method.name=fedkseed aggregates the step records itself (the weighted "
            f"sum per seed is FedAvg); strategy.name={job.strategy.name} cannot read them: use fedavg")
    require(job.privacy.clipping == "none" and not job.privacy.dp_sgd and not job.privacy.secure_aggregation,
            "method.name=fedkseed sends step records, not updates: client-level DP, DP-SGD and secure aggregation "
            "do not apply to them yet; turn them off")
    require(job.client.compression == "none", "method.name=fedkseed sends 8 bytes a step already: "
            "client.compression must be none")
    require(not job.method.personal, "method.name=fedkseed trains every parameter as one shared model: "
            "method.personal must be empty")
    require(job.continual.kind == "none", "method.name=fedkseed does not take a continual stream yet (its steps read "
            "the job's one data set): set continual.kind=none")


CHECKS.register("fedkseed_replaces_the_update", check_kseed)
