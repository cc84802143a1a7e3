"""LoRA (Hu et al. 2021) through peft: low-rank adapters on the named modules, plus the task's head."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig
from torch import nn

from ffm.config import MethodConfig, _check, _f
from ffm.methods.base import Method, with_peft_adapters
from ffm.tasks import Task

__all__ = ["Lora", "LoraMethodConfig"]


@dataclass
class LoraMethodConfig(MethodConfig):
    name: str = "lora"
    r: int = _f(8, "LoRA rank")
    alpha: int = _f(16, "LoRA scaling alpha")
    dropout: float = _f(0.05, "dropout on the LoRA branch")
    targets: list[str] = field(
        default_factory=lambda: ["query", "value"],
        metadata={"help": "module names that get LoRA adapters (comma-separated)"},
    )
    train_head: bool = _f(True, "train (and send) the task's head with the adapters")
    aggregation: str = _f(
        "naive", "naive (average A and B apart) | exact (FedEx-LoRA: the residual goes into the frozen base, which "
        "then travels down every round; fedavg/fedprox only)"
    )
    client_ranks: list[int] = field(
        default_factory=list,
        metadata={"help": "heterogeneous ranks: client k uses client_ranks[k % len] (each <= r); empty = all use r"},
    )

    def __post_init__(self) -> None:
        _check(self.r >= 1, "method.r (LoRA rank) must be at least 1")
        _check(self.aggregation in ("naive", "exact"), f"method.aggregation: '{self.aggregation}' is not one of "
               "naive, exact")
        _check(all(1 <= k <= self.r for k in self.client_ranks),
               f"method.client_ranks {self.client_ranks}: each must be in 1..method.r={self.r}")
        _check(0.0 <= self.dropout < 1.0, "method.dropout must be in [0, 1)")
        _check(bool(self.targets), "method.targets must name at least one module")


class Lora(Method):
    config = LoraMethodConfig

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        cfg = self.cfg
        return with_peft_adapters(model, task, LoraConfig, marker="lora_", train_head=cfg.train_head, r=cfg.r,
                                  lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.targets))
