"""The Method seam: what in a model trains, hence (minus ``method.personal``) what travels.

A method is a typed config (its own keys, validated in ``__post_init__``, peft-style) plus ``apply``, which
marks the trainable parameters. Everything else stays frozen, is never sent, and in simulation exists once
for all virtual clients.
"""

from __future__ import annotations

from typing import Any, ClassVar

from peft import get_peft_model
from torch import nn

from ffm.config import MethodConfig
from ffm.errors import ConfigError
from ffm.tasks import Task

__all__ = ["Method", "with_peft_adapters"]


class Method:
    config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Return the model with exactly the method's parameters trainable."""
        raise NotImplementedError


def with_peft_adapters(model: nn.Module, task: Task, config_class: type, *, marker: str, train_head: bool,
                       **settings: Any) -> nn.Module:
    """Wrap ``model`` with the peft adapter ``config_class`` builds from ``settings``, for ``task``.

    A SEQ_CLS task makes peft train the head itself; a task with a fresh head of another kind names it
    (``task.head_modules``, e.g. the masked LM's transform); without ``train_head`` only the parameters whose
    name contains ``marker`` (the adapters) train.
    """
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, nn.Linear)})
    try:
        config = config_class(task_type=task.peft_task_type,
                              modules_to_save=(list(task.head_modules) or None) if train_head else [], **settings)
        peft_model = get_peft_model(model, config)
    except ValueError as exc:  # peft: no default targets for this architecture, or none matched
        raise ConfigError(
            f"peft could not place {config_class.__name__.removesuffix('Config')} adapters in "
            f"{type(model).__name__} ({str(exc).splitlines()[0][:120]}); its linear layers are named "
            f"{', '.join(linear)}: set method.targets to some of them"
        ) from None
    if not train_head:
        for name, param in peft_model.named_parameters():
            if marker not in name:
                param.requires_grad_(False)
    return peft_model
