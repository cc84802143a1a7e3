"""The Method seam: what in a model trains, hence (minus ``method.personal``) what travels.

A method is a typed config (its own keys, validated in ``__post_init__``, peft-style) plus ``apply``, which
marks the trainable parameters. Everything else stays frozen, is never sent, and in simulation exists once
for all virtual clients.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from flwr.serverapp.strategy import Strategy
from peft import get_peft_model
from torch import nn

from ffm.errors import ConfigError
from ffm.local_training import GradHook
from ffm.registry import Registry
from ffm.settings import Job, items, option
from ffm.tasks import Task

if TYPE_CHECKING:
    from flwr.app import Context, Message, RecordDict

__all__ = ["METHODS", "ClientRound", "Method", "MethodConfig", "PartyAdjustment", "with_peft_adapters"]


@dataclass
class MethodConfig:
    """Base of every method's config; a method registers a subclass with its own keys."""

    name: str = option("lora", "what is trained and sent; registered")
    personal: list[str] = items("trainable parameters whose name contains one of these stay on their client and "
                                "never travel (e.g. classifier: a personal head, FedPer-style)")


@dataclass
class PartyAdjustment:
    """What one party does differently under a method: after a state is loaded (``after_load``), while it
    trains (``grad_hooks``), what it adds to its train metrics, and how its share of the state travels
    (``receive`` turns what the server sent into the full state, ``send`` the full state into what it sends:
    a lower LoRA rank travels trimmed)."""

    after_load: list[GradHook] = field(default_factory=list)  # each called with the model
    grad_hooks: list[GradHook] = field(default_factory=list)
    metrics: dict[str, int | float] = field(default_factory=dict)
    receive: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None  # the global state as sent
    send: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None  # the reply's state as sent
    view: Callable[[nn.Module], AbstractContextManager] | None = None  # the model this party runs (an emulator)


class ClientRound:
    """The client half of a method that does not train on a received state (:meth:`Method.client_round`)."""

    def load(self, workspace: Any, msg: Message, context: Context) -> None:
        """Put the global model the message describes into ``workspace.model`` (before an evaluation)."""
        raise NotImplementedError

    def train(self, job: Job, workspace: Any, index: int, party: int, msg: Message, context: Context) -> RecordDict:
        """This party's round: the reply's content."""
        raise NotImplementedError


class Method:
    """What in a model trains, hence what travels; with the capabilities the rest of ffm reads.

    ``dp_sgd``: Opacus can give per-example gradients of every layer it trains; ``task_types``: the tasks' peft
    task types it can adapt (None: any). An instance (built from its
    config) says whether its server half needs each update (:meth:`needs_each_update`: no secure aggregation,
    no streaming, a plain-mean strategy), whether parties differ (:meth:`for_party`) and how it wraps the
    strategy (:meth:`wrap_strategy`).
    """

    config: ClassVar[type[MethodConfig]] = MethodConfig
    dp_sgd: ClassVar[bool] = False
    task_types: ClassVar[tuple[str, ...] | None] = None  # peft task types it can adapt (None: any task)

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        """Return the model with exactly the method's parameters trainable."""
        raise NotImplementedError

    @property
    def needs_each_update(self) -> bool:
        """Whether the server half aggregates its own way from every reply (not from a plain sum or mean)."""
        return False

    @property
    def parties_differ(self) -> bool:
        """Whether some party trains another shape of state than the global one (no per-example masking)."""
        return False

    def for_party(self, party: int) -> PartyAdjustment:
        """What party ``party`` does differently (nothing, for most methods)."""
        return PartyAdjustment()

    def wrap_strategy(self, strategy: Strategy, job: Job) -> Strategy:
        """The method's server half around the aggregation rule (none, for most methods)."""
        return strategy

    def for_node(self, model: nn.Module) -> nn.Module:
        """The model as a node that holds only its own data keeps it (offsite-tuning: the emulator alone); the
        model itself for most methods."""
        return model

    def views(self) -> dict[str, Callable[[nn.Module], AbstractContextManager]]:
        """Other forms of the global model the server evaluates too, as ``test_<name>_*`` (offsite-tuning's
        emulator); none for most methods."""
        return {}

    def client_round(self) -> ClientRound | None:
        """A method that trains and replies its own way (FedKSeed: zeroth-order steps, step records instead of a
        state): its client half; None = gradient steps on the received state (every other method)."""
        return None


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


METHODS: Registry[type[Method]] = Registry("method.name")
"""Methods by ``method.name``: one file with a ``Method`` subclass plus one ``METHODS.register`` line."""
