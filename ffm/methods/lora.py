"""LoRA (Hu et al. 2021) through peft: low-rank adapters on the named modules, plus the task's head.

How the adapters federate beyond plain averaging (exact aggregation, heterogeneous ranks) is the method's own
server and client half: :mod:`ffm.methods.lora_federation` (the model side) and
:mod:`ffm.methods.lora_aggregation` (the server side).
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.serverapp.strategy import Strategy
from peft import LoraConfig
from torch import nn

from ffm.methods.base import Method, MethodConfig, PartyAdjustment, with_peft_adapters
from ffm.methods.lora_aggregation import LoraAggregation
from ffm.methods.lora_federation import RANK_KEY, client_rank, pad_rank, rank_mask_hook, trim_rank, truncate_rank
from ffm.settings import CHECKS, Job, items, option, require
from ffm.tasks import Task

__all__ = ["Lora", "LoraMethodConfig"]


@dataclass
class LoraMethodConfig(MethodConfig):
    """LoRA's keys: rank, scaling, where the adapters go, and how they federate."""

    name: str = "lora"
    r: int = option(8, "LoRA rank")
    alpha: int = option(16, "LoRA scaling alpha")
    dropout: float = option(0.05, "dropout on the LoRA branch")
    targets: list[str] = items("module names that get LoRA adapters (comma-separated)", ("query", "value"))
    train_head: bool = option(True, "train (and send) the task's head with the adapters")
    aggregation: str = option(
        "naive", "naive (average A and B apart) | exact (FedEx-LoRA: the residual goes into the frozen base, which "
        "then travels down every round; needs a strategy whose aggregate is the plain mean)",
        choices=("naive", "exact"),
    )
    client_ranks: list[int] = items("heterogeneous ranks: client k uses client_ranks[k % len] (each <= r); empty = "
                                    "all use r")
    rank_aggregation: str = option(
        "mean", "with client_ranks: mean (each rank component over the clients that have it) | flexlora (the mean of "
        "the clients' B A, then its truncated SVD: each client gets the best approximation of its rank) | stack "
        "(FLoRA: the exact mean of B A into the frozen base, which then travels down; adapters restart each round)",
        choices=("mean", "flexlora", "stack"))

    freeze_a: bool = option(
        False, "FFA-LoRA (Sun et al., ICLR 2024): A stays at its random init, which every party builds alike from "
        "the job's seed; only B (and the head) trains and travels, so the mean of the Bs is exactly the mean of "
        "the B A, and under DP half the adapter's parameters carry the noise")

    def __post_init__(self) -> None:
        require(self.r >= 1, "method.r (LoRA rank) must be at least 1")
        require(not (self.freeze_a and self.client_ranks), "method.freeze_a trains B alone, which "
                "method.client_ranks cannot trim by rank yet: leave one of them unset")
        require(not (self.freeze_a and self.aggregation == "exact"), "method.freeze_a already makes the mean "
                "of B exact (A is shared and fixed): set method.aggregation=naive")
        require(all(1 <= k <= self.r for k in self.client_ranks),
                f"method.client_ranks {self.client_ranks}: each must be in 1..method.r={self.r}")
        require(0.0 <= self.dropout < 1.0, "method.dropout must be in [0, 1)")
        require(bool(self.targets), "method.targets must name at least one module")


class Lora(Method):
    """peft's LoRA; exact aggregation and heterogeneous ranks change its server and client halves."""

    config = LoraMethodConfig
    dp_sgd = True  # Linear adapters: Opacus gives their per-example gradients

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        cfg = self.cfg
        model = with_peft_adapters(model, task, LoraConfig, marker="lora_", train_head=cfg.train_head, r=cfg.r,
                                   lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.targets))
        if cfg.freeze_a:  # peft has no switch for it: A off the trainable state, so it neither trains nor travels
            for name, param in model.named_parameters():
                if ".lora_A." in name:
                    param.requires_grad_(False)
        return model

    @property
    def needs_each_update(self) -> bool:
        return self.cfg.aggregation == "exact" or bool(self.cfg.client_ranks)

    @property
    def parties_differ(self) -> bool:
        return bool(self.cfg.client_ranks)

    def for_party(self, party: int) -> PartyAdjustment:
        """A party of a lower rank zeroes the components beyond it on load and keeps them zero as it trains."""
        if not self.cfg.client_ranks:
            return PartyAdjustment()
        rank, full = client_rank(self.cfg.client_ranks, party, self.cfg.r), self.cfg.r
        return PartyAdjustment(after_load=[lambda model: truncate_rank(model, rank)],
                               grad_hooks=[_LazyMask(rank)], metrics={RANK_KEY: rank},
                               receive=lambda state: pad_rank(state, full), send=lambda state: trim_rank(state, rank))

    def wrap_strategy(self, strategy: Strategy, job: Job) -> Strategy:
        if not self.needs_each_update:
            return strategy
        ranks = self.cfg.client_ranks
        return LoraAggregation(strategy, exact=self.cfg.aggregation == "exact", scaling=self.cfg.alpha / self.cfg.r,
                               heterogeneous=bool(ranks), rank_of=lambda party: client_rank(ranks, party, self.cfg.r),
                               rank_rule=self.cfg.rank_aggregation)


class _LazyMask:
    """The rank mask as a gradient hook, built on its first call (it needs the model's parameters)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.hook = None

    def __call__(self, model: nn.Module) -> None:
        if self.hook is None:
            self.hook = rank_mask_hook(model, self.rank)
        self.hook(model)


def check_mixed_ranks(job: Job) -> None:
    """A lower rank travels trimmed: a codec that encodes against the full state sent cannot decode it."""
    if job.method.name == "lora" and job.method.client_ranks:
        require(job.client.compression == "none", "method.client_ranks sends each party its own rank, which "
                "client.compression cannot encode yet: set client.compression=none")


CHECKS.register("mixed_lora_ranks_travel_trimmed", check_mixed_ranks)
