"""What is trainable, hence what travels: a registry from ``method.name`` to a function that prepares the model.

LoRA comes from ``peft``; ``full`` trains every weight. More peft methods (IA3, prompt tuning, ...) register here.
"""

from __future__ import annotations

from collections.abc import Callable

from peft import LoraConfig, TaskType, get_peft_model
from torch import nn

from ffm.config import MethodConfig

__all__ = ["METHODS", "apply_method"]


def _lora(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.targets),
        # SEQ_CLS makes peft train the head; without train_head only the adapters are trainable.
        modules_to_save=None if cfg.train_head else [],
    )
    peft_model = get_peft_model(model, lora)
    if not cfg.train_head:
        for name, param in peft_model.named_parameters():
            if "lora_" not in name:
                param.requires_grad_(False)
    return peft_model


def _full(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(True)
    return model


METHODS: dict[str, Callable[[nn.Module, MethodConfig], nn.Module]] = {"lora": _lora, "full": _full}


def apply_method(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    """Mark what ``method.name`` trains; everything else stays frozen and never leaves the process."""
    return METHODS[cfg.name](model, cfg)
