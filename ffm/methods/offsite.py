"""Offsite-tuning (Xiao, Lin and Han 2023): clients tune an *emulator* of the model, never the model itself.

The model's bottom and top ``method.adapter_layers`` transformer layers are the adapter: they (and the task's
head) train and travel. The clients run the emulator: the adapter around a compressed middle, here every
``method.keep_every``-th of the frozen middle layers (the paper's uniform layer drop, without its
distillation). The server plugs the tuned adapter back into the full model; it evaluates both, the full model
as ``test_*`` and the emulator as ``test_emulator_*``. Nothing of the middle ever travels: it is frozen.

What this does not do yet: ship the emulator itself. A node builds its emulator from the model it loads, so in
a deployment it still needs the model's weights on disk (the emulator runs with the dropped layers out of the
computation, but they stay in memory); a model owner who must keep its weights private ships a saved emulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from ffm.methods.base import Method, MethodConfig, PartyAdjustment
from ffm.settings import option, require
from ffm.tasks import Task

__all__ = ["Offsite", "OffsiteConfig", "emulated", "emulator_layers", "layer_list"]

HEADS = ("classifier", "score", "pooler")  # the task heads transformers' classification models name this way


@dataclass
class OffsiteConfig(MethodConfig):
    """Offsite-tuning's keys: the adapter's depth and how the emulator's middle is compressed."""

    name: str = "offsite"
    adapter_layers: int = option(2, "the bottom and the top this many transformer layers: the adapter that trains "
                                 "and travels")
    keep_every: int = option(2, "the emulator keeps every n-th of the frozen middle layers (uniform layer drop; "
                             "1 = all: the emulator is the model)")
    train_head: bool = option(True, "train (and send) the task's head with the adapter")

    def __post_init__(self) -> None:
        require(self.adapter_layers >= 1, "method.adapter_layers must be at least 1")
        require(self.keep_every >= 1, "method.keep_every must be at least 1")


def layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, the list) of the model's transformer layers: the ModuleList as long as its config's
    layer count (BERT's encoder.layer, GPT-2's h, Llama's layers, ViT's encoder.layer)."""
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for module in model.modules():
        for attr, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == count:
                return module, attr, child
    raise ValueError(f"{type(model).__name__}: no list of {count} transformer layers found")


def emulator_layers(total: int, adapter: int, every: int) -> list[int]:
    """The layers the emulator runs: the adapter's (bottom and top) and every ``every``-th of the middle."""
    return [*range(adapter), *range(adapter, total - adapter, every), *range(total - adapter, total)]


@contextmanager
def emulated(model: nn.Module, keep: list[int]) -> Iterator[nn.Module]:
    """The model running only the layers in ``keep`` (the emulator), for the duration of the block."""
    parent, attr, layers = layer_list(model)
    setattr(parent, attr, nn.ModuleList([layers[i] for i in keep]))
    try:
        yield model
    finally:
        setattr(parent, attr, layers)


class Offsite(Method):
    """The adapter layers (and the head) train on the emulator; the full model is the server's."""

    config = OffsiteConfig

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        cfg = self.cfg
        _, _, layers = layer_list(model)
        require(2 * cfg.adapter_layers < len(layers),
                f"method.adapter_layers={cfg.adapter_layers}: the model has {len(layers)} layers, so at most "
                f"{(len(layers) - 1) // 2} can adapt at each end and leave a middle to compress")
        for param in model.parameters():
            param.requires_grad_(False)
        for index in (*range(cfg.adapter_layers), *range(len(layers) - cfg.adapter_layers, len(layers))):
            layers[index].requires_grad_(True)
        if cfg.train_head:
            heads = set(HEADS) | set(task.head_modules)
            for name, module in model.named_modules():
                if name.rsplit(".", 1)[-1] in heads:
                    module.requires_grad_(True)
        return model

    def _keep(self, model: nn.Module) -> list[int]:
        return emulator_layers(len(layer_list(model)[2]), self.cfg.adapter_layers, self.cfg.keep_every)

    def for_party(self, party: int) -> PartyAdjustment:
        """Every party trains and evaluates on the emulator."""
        return PartyAdjustment(view=lambda model: emulated(model, self._keep(model)))

    def views(self) -> dict[str, object]:
        """What the server evaluates besides the full model: the emulator alone."""
        return {"emulator": lambda model: emulated(model, self._keep(model))}
