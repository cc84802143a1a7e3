"""BitFit (Ben Zaken et al. 2022): only the bias terms train (plus the task's head), no adapter at all.

peft has no BitFit, and none is needed: it is a choice of which existing parameters have ``requires_grad``.
A model without bias terms (Llama-style decoders) is a clear error rather than a run that trains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ffm.errors import ConfigError
from ffm.methods.base import Method, MethodConfig
from ffm.settings import option
from ffm.tasks import Task

__all__ = ["BitFit", "BitFitMethodConfig"]

# The freshly initialized classification heads of transformers' sequence-classification models.
_CLASSIFIER_HEADS = ("classifier", "score")


@dataclass
class BitFitMethodConfig(MethodConfig):
    """BitFit's key: whether the head trains with the biases."""

    name: str = "bitfit"
    train_head: bool = option(True, "train (and send) the task's head with the bias terms")


class BitFit(Method):
    """Bias terms (and the head) train: a choice of ``requires_grad``, no adapter."""

    config = BitFitMethodConfig
    dp_sgd = True  # bias terms and LayerNorms: Opacus gives their per-example gradients

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        heads = tuple(task.head_modules) or (_CLASSIFIER_HEADS if task.peft_task_type == "SEQ_CLS" else ())
        biases = 0
        for name, param in model.named_parameters():
            is_bias = name.endswith(".bias")
            in_head = self.cfg.train_head and any(f"{h}." in f"{name}." for h in heads)
            param.requires_grad_(is_bias or in_head)
            biases += is_bias
        if not biases:
            raise ConfigError(f"method.name=bitfit: {type(model).__name__} has no bias terms to train; choose "
                              "lora, ia3 or full")
        return model
