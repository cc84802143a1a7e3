"""IA3 (Liu et al. 2022) through peft: learned scaling vectors on keys, values and the feed-forward output.

The fewest parameters of the adapter methods (one vector per adapted module), so the cheapest to send.
With empty ``method.targets`` peft picks the modules for the architecture (BERT: key, value, output.dense;
GPT-2: c_attn, mlp.c_proj; Llama: k_proj, v_proj, down_proj).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import IA3Config, get_peft_model
from torch import nn

from ffm.config import MethodConfig, _f
from ffm.methods.base import Method, freeze_all_but_adapters
from ffm.tasks import Task

__all__ = ["Ia3", "Ia3MethodConfig"]


@dataclass
class Ia3MethodConfig(MethodConfig):
    name: str = "ia3"
    targets: list[str] = field(
        default_factory=list, metadata={"help": "modules that get IA3 vectors (empty = peft's default for the model)"}
    )
    feedforward: list[str] = field(
        default_factory=list, metadata={"help": "which of the IA3 targets are feed-forward (scaled on their input)"}
    )
    train_head: bool = _f(True, "train (and send) the task's head with the vectors")


class Ia3(Method):
    config = Ia3MethodConfig

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        cfg = self.cfg
        ia3 = IA3Config(
            task_type=task.peft_task_type,
            target_modules=list(cfg.targets) or None,
            feedforward_modules=list(cfg.feedforward) or None,
            modules_to_save=(list(task.head_modules) or None) if cfg.train_head else [],
        )
        peft_model = get_peft_model(model, ia3)
        if not cfg.train_head:
            freeze_all_but_adapters(peft_model, "ia3_")
        return peft_model
