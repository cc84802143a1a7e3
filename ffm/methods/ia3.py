"""IA3 (Liu et al. 2022) through peft: learned scaling vectors on keys, values and the feed-forward output.

The fewest parameters of the adapter methods (one vector per adapted module), so the cheapest to send.
With empty ``method.targets`` peft picks the modules for the architecture (BERT: key, value, output.dense;
GPT-2: c_attn, mlp.c_proj; Llama: k_proj, v_proj, down_proj).
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import IA3Config
from torch import nn

from ffm.methods.base import Method, MethodConfig, with_peft_adapters
from ffm.settings import items, option
from ffm.tasks import Task

__all__ = ["Ia3", "Ia3MethodConfig"]


@dataclass
class Ia3MethodConfig(MethodConfig):
    """IA3's keys: where the scaling vectors go."""

    name: str = "ia3"
    targets: list[str] = items("modules that get IA3 vectors (empty = peft's default for the model)")
    feedforward: list[str] = items("which of the IA3 targets are feed-forward (scaled on their input)")
    train_head: bool = option(True, "train (and send) the task's head with the vectors")


class Ia3(Method):
    """peft's IA3 vectors (plus the head, by default)."""

    config = Ia3MethodConfig

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        cfg = self.cfg
        return with_peft_adapters(model, task, IA3Config, marker="ia3_", train_head=cfg.train_head,
                                  target_modules=list(cfg.targets) or None,
                                  feedforward_modules=list(cfg.feedforward) or None)
