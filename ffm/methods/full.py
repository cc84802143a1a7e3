"""Full fine-tuning: every weight trains and travels (the costly reference the PEFT methods are measured by)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ffm.methods.base import Method, MethodConfig
from ffm.tasks import Task

__all__ = ["Full", "FullMethodConfig"]


@dataclass
class FullMethodConfig(MethodConfig):
    """Full fine-tuning has no keys of its own."""

    name: str = "full"


class Full(Method):
    """Every parameter trains and travels."""

    config = FullMethodConfig

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
