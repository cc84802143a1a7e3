"""Preference alignment of a decoder with DPO (Rafailov et al., 2023): FedDPO.

Each example is a prompt with a chosen and a rejected reply (:mod:`ffm.data.chat`), rendered with the model's
chat template. The loss of a pair is ``-log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))``
with log-probabilities summed over the reply's tokens (TRL's ``sigmoid`` DPO loss; a test holds it to TRL's
own on the same batch). The reference is the run's initial model: the frozen base with the run's initial
adapter (for a fresh LoRA, the base itself; after ``model.init_from`` an SFT run, that SFT model, as TRL does
when it re-trains an adapter), computed by swapping the small trainable state in place, never a second copy of
the model. Methods that train the whole model have no small state to swap and are refused.

Evaluation on held-out pairs: preference accuracy (the chosen reply's implicit reward above the rejected
one's; the primary metric), the mean reward margin, and instruction tuning's generation scores against the
chosen reply, so that alignment which breaks generation shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from ffm.settings import option, require
from ffm.tasks.base import ensure_pad_token
from ffm.tasks.chat import fit, prompt_ids, render
from ffm.tasks.examples import Examples, batches
from ffm.tasks.instruction import Instruction, InstructionConfig, padded, response_logps

__all__ = ["Preference", "PreferenceConfig", "dpo_loss"]

SIDES = ("chosen", "rejected")


@dataclass
class PreferenceConfig(InstructionConfig):
    """DPO's keys (and instruction tuning's, for the generation scores)."""

    name: str = "preference"
    beta: float = option(0.1, "DPO's beta: how far the policy may move from the reference (TRL's default 0.1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.beta > 0, f"task.beta must be > 0, got {self.beta}")


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Per-pair DPO loss from summed log-probabilities (policy and reference, chosen and rejected)."""
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))


class Preference(Instruction):
    """DPO on preference pairs against the run's initial model; preference accuracy."""

    config = PreferenceConfig
    columns = ("prompt", "chosen", "rejected")
    primary_metric = "preference_accuracy"
    higher_is_better = True

    def __init__(self, cfg: PreferenceConfig) -> None:
        super().__init__(cfg)
        self.reference: dict[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module) -> None:
        """Keep the run's initial trainable parameters: the reference model is the model with them."""
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        total = sum(p.numel() for p in model.parameters())
        if sum(p.numel() for p in trainable.values()) > 0.25 * total:
            from ffm.errors import ConfigError

            raise ConfigError("task.name=preference needs a method that trains a small part of the model (lora, ia3, "
                              "prompt tuning...): DPO's reference is the initial model, kept as that part's initial "
                              "values; method.name=full would need a second copy of the whole model")
        self.reference = {name: p.detach().clone() for name, p in trainable.items()}

    @contextmanager
    def as_reference(self, model: nn.Module) -> Iterator[None]:
        """The model with its trainable parameters at the reference values (restored on exit)."""
        params = dict(model.named_parameters())
        current = {name: params[name].detach().clone() for name in self.reference}
        with torch.no_grad():
            for name, value in self.reference.items():
                params[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in current.items():
                    params[name].copy_(value)

    def encode(self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Examples:
        ensure_pad_token(tokenizer)
        self.tokenizer = tokenizer
        rows: dict[str, list[list[int]]] = {f"{side}_{k}": [] for side in SIDES for k in ("ids", "labels")}
        prompts, references = [], []
        template = self.cfg.template
        for prompt, chosen, rejected in zip(ds["prompt"], ds["chosen"], ds["rejected"], strict=True):
            kept, _ = fit(tokenizer, prompt, max_length, template, reply=max(chosen, rejected, key=len))
            for side, reply in zip(SIDES, (chosen, rejected), strict=True):
                rendered = render(tokenizer, [*kept, {"role": "assistant", "content": reply}], template)
                ids, mine = rendered.ids[:max_length], rendered.assistant[:max_length]
                rows[f"{side}_ids"].append(ids)
                rows[f"{side}_labels"].append([t if m else -100 for t, m in zip(ids, mine, strict=True)])
            prompts.append(prompt_ids(tokenizer, kept, template)[-max_length:])
            references.append(list(tokenizer(chosen, add_special_tokens=False)["input_ids"]))
        tensors: dict[str, torch.Tensor] = {}
        lengths = torch.zeros(len(prompts), dtype=torch.long)
        for side in SIDES:
            ids, side_lengths = padded(rows[f"{side}_ids"], tokenizer.pad_token_id)
            labels, _ = padded(rows[f"{side}_labels"], -100)
            tensors[f"{side}_input_ids"], tensors[f"{side}_labels"] = ids, labels
            tensors[f"{side}_attention_mask"] = (torch.arange(ids.shape[1])[None, :] < side_lengths[:, None]).long()
            lengths = torch.maximum(lengths, side_lengths)
        width = int(lengths.max()) if len(lengths) else 1
        for key in list(tensors):  # one width for both sides, so that batches cut them together
            value = tensors[key]
            fill = -100 if key.endswith("labels") else 0 if key.endswith("mask") else tokenizer.pad_token_id
            tensors[key] = F.pad(value, (0, width - value.shape[1]), value=fill)
        for name, values in (("prompt", prompts), ("reference", references)):
            tensors[f"{name}_ids"], tensors[f"{name}_lengths"] = padded(values, tokenizer.pad_token_id)
        return Examples(tensors, lengths, sequence_keys=tuple(f"{s}_{k}" for s in SIDES
                                                              for k in ("input_ids", "attention_mask", "labels")))

    def _logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed reply log-probabilities (chosen, rejected), both sides in one forward pass."""
        pad = self.tokenizer.pad_token_id
        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
        mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
        labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
        summed, _ = response_logps(model, ids.masked_fill(mask == 0, pad), mask, labels)
        return summed.chunk(2)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # the reference first: swapping parameters in place after the policy's forward would corrupt its graph
        with torch.no_grad(), self.as_reference(model):
            ref_chosen, ref_rejected = self._logps(model, batch)
        chosen, rejected = self._logps(model, batch)
        return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.cfg.beta).mean()

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: Examples, batch_size: int) -> dict[str, float]:
        model.eval()
        wins, margins, losses = [], [], []
        for batch in batches(data, batch_size):
            chosen, rejected = self._logps(model, batch)
            with self.as_reference(model):
                ref_chosen, ref_rejected = self._logps(model, batch)
            margin = self.cfg.beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
            wins.append(margin > 0)
            margins.append(margin)
            losses.append(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.cfg.beta))
        wins_t, margins_t, losses_t = torch.cat(wins).float(), torch.cat(margins), torch.cat(losses)
        return {"loss": float(losses_t.mean()), "preference_accuracy": float(wins_t.mean()),
                "reward_margin": float(margins_t.mean()), **self.generation_scores(model, data, batch_size),
                "num-examples": len(data)}
