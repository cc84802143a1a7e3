"""A toy method: only the parameters whose name contains ``method.toy_part`` train (and travel)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ffm.methods import Method, MethodConfig
from ffm.settings import option
from ffm.tasks import Task


@dataclass
class HeadOnlyConfig(MethodConfig):
    name: str = "toy_head_only"
    toy_part: str = option("classifier", "parameters whose name contains this train")


class HeadOnly(Method):
    config = HeadOnlyConfig

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        for name, param in model.named_parameters():
            param.requires_grad_(self.cfg.toy_part in name)
        return model
