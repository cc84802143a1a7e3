"""Offsite-tuning (Xiao, Lin and Han 2023): clients tune an *emulator* of the model, never the model itself.

The model's bottom and top ``method.adapter_layers`` transformer layers are the adapter: they (and the task's
head) train and travel. The clients run the emulator: the adapter around a compressed middle, here every
``method.keep_every``-th of the frozen middle layers (the paper's uniform layer drop, without its
distillation). The server plugs the tuned adapter back into the full model; it evaluates both, the full model
as ``test_*`` and the emulator as ``test_emulator_*``. Nothing of the middle ever travels: it is frozen.

A node that holds only its own data (a SuperNode: ``ffm deploy supernode --data``) keeps only the emulator: it
drops the other middle layers right after it loads the model (:meth:`Offsite.for_node`), so they leave its
memory. The emulator's layers keep the names they have in the full model (layer 5 stays ``layer.5``), so the
state that travels needs no renaming. What this does not do yet: ship the emulator itself. A node builds its
emulator from the model it loads, so it still needs the model's weights on disk and holds them all while it
loads; a model owner who must keep its weights private would ship a saved emulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from ffm.methods.base import Method, MethodConfig, PartyAdjustment
from ffm.settings import option, require
from ffm.tasks import Task

__all__ = ["Offsite", "OffsiteConfig", "emulated", "emulator_layers", "kept_layers", "layer_list"]

EMULATOR = "_ffm_emulator"  # set on a model whose middle layers were dropped for good
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


def kept_layers(layers: nn.ModuleList, keep: list[int]) -> nn.ModuleList:
    """The layers in ``keep``, in order, under their indices in the full model (so their parameters keep their
    names: the emulator's state is the full model's, minus the dropped layers)."""
    out = nn.ModuleList()
    for index in keep:
        out.add_module(str(index), layers[index])
    return out


@contextmanager
def emulated(model: nn.Module, keep: list[int]) -> Iterator[nn.Module]:
    """The model running only the layers in ``keep`` (the emulator), for the duration of the block; a model that
    is an emulator already (:meth:`Offsite.for_node`) runs as it is."""
    if getattr(model, EMULATOR, False):
        yield model
        return
    parent, attr, layers = layer_list(model)
    setattr(parent, attr, kept_layers(layers, keep))
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
        config = model.config
        total = getattr(config, "num_hidden_layers", None) or config.n_layer  # the full model's, also on a node
        return emulator_layers(total, self.cfg.adapter_layers, self.cfg.keep_every)

    def for_node(self, model: nn.Module) -> nn.Module:
        """A node holding only its own data keeps only the emulator: the other middle layers go."""
        parent, attr, layers = layer_list(model)
        setattr(parent, attr, kept_layers(layers, self._keep(model)))
        setattr(model, EMULATOR, True)
        return model

    def for_party(self, party: int) -> PartyAdjustment:
        """Every party trains and evaluates on the emulator."""
        return PartyAdjustment(view=lambda model: emulated(model, self._keep(model)))

    def views(self) -> dict[str, object]:
        """What the server evaluates besides the full model: the emulator alone."""
        return {"emulator": lambda model: emulated(model, self._keep(model))}
