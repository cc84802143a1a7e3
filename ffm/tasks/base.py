"""The Task seam: what a job optimizes and how it is measured.

A task owns everything that depends on the objective: the model class and head it builds, the columns
its data must have, how raw examples become tensors, the loss of a batch, the metrics of an evaluation
and which of them is primary (with its direction). The server, run directory, summary and CLI print
whatever the task names. A new task is one file with a ``Task`` subclass plus one ``TASKS.register`` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import datasets
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ffm.models.config import ModelConfig
from ffm.registry import Registry
from ffm.settings import option
from ffm.tasks.examples import Examples

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from ffm.settings import Job

__all__ = ["TASKS", "Task", "TaskConfig", "ensure_pad_token"]


@dataclass
class TaskConfig:
    """Base of every task's config; a task registers a subclass with its own keys."""

    name: str = option("text_classification", "objective and metric; registered")


class Task:
    """One objective. Subclasses set the class attributes and implement ``build_model``, ``encode`` and
    ``evaluate`` (``loss`` defaults to the model's own).

    Capabilities other parts of ffm read (never the task's name): ``growable_head`` (a class-incremental stream
    may add classes to its head), ``prompt_slot`` (a discrete prompt search can score templates holding it).
    """

    config: ClassVar[type[TaskConfig]] = TaskConfig
    columns: ClassVar[tuple[str, ...]] = ()  # the data schema a source must provide
    primary_metric: ClassVar[str] = ""  # a key of evaluate()'s result
    higher_is_better: ClassVar[bool] = True
    peft_task_type: ClassVar[str | None] = None  # peft's TaskType for this head ("SEQ_CLS", "CAUSAL_LM", ...)
    uses_tokenizer: ClassVar[bool] = True  # image tasks read no text
    head_modules: ClassVar[tuple[str, ...]] = ()  # a fresh head that adapters must train along (peft's modules_to_save)
    growable_head: ClassVar[bool] = False  # a classification head whose rows are the classes
    prompt_slot: ClassVar[str | None] = None  # where the input goes in a scored prompt ("{text}"), if it has one

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.frozen_prefixes: tuple[str, ...] = ()  # parts of the model that stay frozen whatever the method says

    def build_model(
        self, model: ModelConfig, label_names: list[str], tokenizer: PreTrainedTokenizerBase, seed: int
    ) -> PreTrainedModel:
        """The backbone with this task's head, loaded (or built) as ``model`` says; ``seed`` fixes a fresh head,
        so every process builds bit-identical weights."""
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> None:
        """Called once the model is built, its method applied and ``model.init_from`` loaded: what the task keeps of
        the initial model (DPO's reference). Nothing by default."""

    def sample(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> str | None:
        """A text the model produces, written into the run directory each round (generative tasks), or None."""
        return None

    def encode(self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Examples:
        """A split's raw examples as the tensors the model takes (encoded once per party, then reused)."""
        raise NotImplementedError

    def encode_train(self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Examples:
        """A party's training split as tensors: :meth:`encode` unless the task trains on other views of the text
        (a language model's overlapping windows)."""
        return self.encode(ds, tokenizer, max_length)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of a batch (what local training minimizes)."""
        return model(**batch).loss

    def party_objective(self, data: Examples) -> Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
        """What one party's local training minimizes, given that party's whole training split: :meth:`loss` unless
        the task corrects for what the party holds (a classifier's logit adjustment by the party's label counts)."""
        return self.loss

    def party_metrics(self, data: Examples, num_labels: int) -> dict[str, Any]:
        """What a party reports about its training split beside its update (a classifier's counts of each of the
        data set's ``num_labels`` classes, for a per-class head aggregation); nothing by default."""
        return {}

    def wrap_strategy(self, strategy: Strategy, job: Job) -> Strategy:
        """The task's server half around the aggregation rule (none, for most tasks)."""
        return strategy

    @property
    def needs_each_update(self) -> bool:
        """Whether :meth:`wrap_strategy` reads each reply (then replies cannot be folded as they arrive)."""
        return False

    def evaluate(self, model: nn.Module, data: Examples, batch_size: int) -> dict[str, float]:
        """Metrics over ``data``: at least ``loss``, the primary metric and ``num-examples``."""
        raise NotImplementedError

    @torch.inference_mode()
    def example_losses(self, model: nn.Module, data: Examples) -> torch.Tensor:
        """(N,) loss of each example (what a membership-inference attack reads); one example per forward here,
        a task may do it batched."""
        from ffm.tasks.examples import batches

        model.eval()
        return torch.tensor([float(self.loss(model, batch)) for batch in batches(data, 1)])

    def diagnose(self, metrics: dict[str, Any]) -> str | None:
        """Why these metrics look like a broken run (a warning for the user), or None."""
        return None

    def better(self, a: float, b: float) -> bool:
        """Whether primary-metric value ``a`` is better than ``b``."""
        return a > b if self.higher_is_better else a < b


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """Decoders (GPT, Llama) ship no pad token: pad with EOS, and tell the model which id pads."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


TASKS: Registry[type[Task]] = Registry("task.name")
"""Tasks by ``task.name``: one file with a ``Task`` subclass plus one ``TASKS.register`` line."""
