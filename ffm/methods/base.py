"""The Method seam: what in a model trains, hence (minus ``method.personal``) what travels.

A method is a typed config (its own keys, validated in ``__post_init__``, peft-style) plus ``apply``, which
marks the trainable parameters. Everything else stays frozen, is never sent, and in simulation exists once
for all virtual clients.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ffm.config import MethodConfig
from ffm.tasks import Task

__all__ = ["Method", "freeze_all_but_adapters"]


class Method:
    config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Return the model with exactly the method's parameters trainable."""
        raise NotImplementedError


def freeze_all_but_adapters(model: nn.Module, marker: str) -> None:
    """Leave only parameters whose name contains ``marker`` trainable (peft would also train the head)."""
    for name, param in model.named_parameters():
        if marker not in name:
            param.requires_grad_(False)
