"""Soft prompts through peft: prompt tuning, prefix tuning and P-tuning, federated like any other state.

Each learns virtual tokens in front of the input while the whole model stays frozen:

- ``prompt_tuning`` (Lester et al. 2021): the virtual tokens' input embeddings;
- ``prefix_tuning`` (Li and Liang 2021): key/value prefixes in every layer (optionally through an MLP);
- ``p_tuning`` (Liu et al. 2021): virtual tokens produced by a small prompt encoder (MLP or LSTM).

peft supports prompt learning for sequence classification (its head trains along) and causal LMs; any other
task is a one-line error naming those. Prefix tuning also needs a model that takes past key values (GPT-2,
Llama; not transformers 5's BERT). Virtual tokens take positions: with learned position embeddings (GPT-2),
``model.max_length`` + ``method.virtual_tokens`` must fit the model's context.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model
from torch import nn

from ffm.errors import ConfigError
from ffm.methods.base import Method, MethodConfig
from ffm.settings import option, require
from ffm.tasks import Task

__all__ = ["PTuning", "PrefixTuning", "PromptTuning"]



@dataclass
class _VirtualTokens(MethodConfig):
    virtual_tokens: int = option(20, "number of virtual tokens put in front of every input")

    def __post_init__(self) -> None:
        require(self.virtual_tokens >= 1, "method.virtual_tokens must be at least 1")


@dataclass
class PromptTuningMethodConfig(_VirtualTokens):
    """Prompt tuning's keys: how many virtual tokens, and their start."""

    name: str = "prompt_tuning"
    init: str = option("random", "initial virtual-token embeddings: random | sample_vocab (embeddings of random words)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.init in ("random", "sample_vocab"), f"method.init: '{self.init}' is not random or sample_vocab")


@dataclass
class PrefixTuningMethodConfig(_VirtualTokens):
    """Prefix tuning's keys: how many virtual tokens, and an optional MLP."""

    name: str = "prefix_tuning"
    projection: bool = option(False, "produce the prefixes through a 2-layer MLP (more to train and send)")


@dataclass
class PTuningMethodConfig(_VirtualTokens):
    """P-tuning's keys: how many virtual tokens, and the prompt encoder."""

    name: str = "p_tuning"
    encoder: str = option("MLP", "the prompt encoder: MLP | LSTM")
    encoder_hidden: int = option(128, "hidden size of the prompt encoder")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.encoder in ("MLP", "LSTM"), f"method.encoder: '{self.encoder}' is not MLP or LSTM")


class _SoftPrompt(Method):
    """peft's prompt learning: sequence classification (its head trains along) and causal LMs only."""

    task_types = ("SEQ_CLS", "CAUSAL_LM")


def _task_type(task: Task, method: str) -> str:
    if task.peft_task_type not in _SoftPrompt.task_types:  # the job's check refuses it first; a direct use too
        raise ConfigError(f"method.name={method} (peft prompt learning) cannot adapt task.name={task.cfg.name}")
    return task.peft_task_type


class PromptTuning(_SoftPrompt):
    """Prompt tuning: the virtual tokens' input embeddings train."""

    config = PromptTuningMethodConfig

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        init = {"random": "RANDOM", "sample_vocab": "SAMPLE_VOCAB"}[self.cfg.init]
        return get_peft_model(model, PromptTuningConfig(task_type=_task_type(task, self.cfg.name),
                                                        num_virtual_tokens=self.cfg.virtual_tokens,
                                                        prompt_tuning_init=init))


class PrefixTuning(_SoftPrompt):
    """Prefix tuning: key/value prefixes in every layer train."""

    config = PrefixTuningMethodConfig

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        task_type = _task_type(task, self.cfg.name)
        config = PrefixTuningConfig(task_type=task_type, num_virtual_tokens=self.cfg.virtual_tokens,
                                    prefix_projection=self.cfg.projection)
        peft_model = get_peft_model(model, config)
        if task_type == "SEQ_CLS" and not _takes_past_key_values(peft_model):  # else peft fails at the 1st forward
            raise ConfigError(f"method.name=prefix_tuning: peft cannot put prefixes into {type(model).__name__} (it "
                              "takes no past key values); use prompt_tuning or p_tuning")
        return peft_model


def _takes_past_key_values(peft_model: nn.Module) -> bool:
    """peft's own test (PeftModelForSequenceClassification.forward): the model, or its transformer backbone."""
    if "past_key_values" in inspect.signature(peft_model.base_model.forward).parameters:
        return True
    backbone = getattr(peft_model, "transformer_backbone_name", None)
    return bool(backbone) and "past_key_values" in inspect.signature(
        peft_model.base_model.get_submodule(backbone).forward).parameters


class PTuning(_SoftPrompt):
    """P-tuning: a small prompt encoder produces the virtual tokens."""

    config = PTuningMethodConfig

    def apply(self, model: nn.Module, task: Task) -> nn.Module:
        return get_peft_model(model, PromptEncoderConfig(task_type=_task_type(task, self.cfg.name),
                                                         num_virtual_tokens=self.cfg.virtual_tokens,
                                                         encoder_reparameterization_type=self.cfg.encoder,
                                                         encoder_hidden_size=self.cfg.encoder_hidden))
