"""Masked language modelling (BERT style): 15% of tokens masked by transformers' collator (80% [MASK], 10% random,
10% kept), cross-entropy on the masked tokens, perplexity (lower is better) as the primary metric.

Training masks each batch afresh from the client's seeded generator state; evaluation masks with a fixed
seed, so every round is measured on the same masked tokens. The vocabulary projection runs on the masked
positions only (the loss reads nothing else): for MiniLM (30,522 ids, width 384) that projection costs as much
as the whole encoder over all positions, so skipping the 85% unmasked ones halves a training step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import datasets
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, PreTrainedModel, PreTrainedTokenizerBase

from ffm.models.backbone import load_model
from ffm.models.config import ModelConfig
from ffm.settings import option, require
from ffm.tasks.base import Task, TaskConfig
from ffm.tasks.examples import Examples, batches
from ffm.tasks.text_blocks import first_tokens, pack_blocks

__all__ = ["MaskedLM", "MaskedLMConfig"]

logger = logging.getLogger("ffm")


@dataclass
class MaskedLMConfig(TaskConfig):
    """The masked LM's keys: the masking rate and the evaluation budget."""

    name: str = "masked_lm"
    mlm_probability: float = option(0.15, "share of tokens masked")
    eval_tokens: int = option(20000, "evaluate on at most this many held-out tokens per split (0 = all)")
    separator: bool = option(True, "an end-of-text token between examples (false: a raw text stream)")

    def __post_init__(self) -> None:
        require(0.0 < self.mlm_probability < 1.0, "task.mlm_probability must be in (0, 1)")
        require(self.eval_tokens >= 0, "task.eval_tokens must be >= 0")


class MaskedLM(Task):
    """BERT-style masked-token prediction on packed blocks; perplexity."""

    config = MaskedLMConfig
    columns = ("text",)
    primary_metric = "perplexity"
    higher_is_better = False
    peft_task_type = None
    head_modules = ("transform",)  # the MLM head's dense + LayerNorm (its decoder is tied to the embeddings)

    def __init__(self, cfg: MaskedLMConfig) -> None:
        super().__init__(cfg)
        self.collator: DataCollatorForLanguageModeling | None = None

    def build_model(
        self, model: ModelConfig, label_names: list[str], tokenizer: PreTrainedTokenizerBase, seed: int
    ) -> PreTrainedModel:
        built = load_model(AutoModelForMaskedLM, model, tokenizer, seed)
        saved_as = getattr(built.config, "architectures", None) or []
        if not model.from_scratch and not any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in saved_as):
            # Encoders saved for sentence embeddings (MiniLM: "BertModel") ship no MLM head: transformers
            # initializes one, its decoder tied to the input embeddings. Say so: the first rounds train it.
            logger.info("masked_lm: model.name=%s ships no MLM head; initialized one (decoder tied to the input "
                        "embeddings)", model.name)
        return built

    def encode(self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Examples:
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=self.cfg.mlm_probability)
        return pack_blocks(list(ds["text"]), tokenizer, max_length, wrap=True, separator=self.cfg.separator)

    def _masked(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.collator is None:
            raise RuntimeError("masked_lm: encode() builds the collator before any batch is masked")
        inputs, labels = self.collator.torch_mask_tokens(batch["input_ids"].clone())
        labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
        return {"input_ids": inputs, "attention_mask": batch["attention_mask"], "labels": labels}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._masked_loss(model, self._masked(batch))

    @staticmethod
    def _masked_loss(model: nn.Module, masked: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy on the masked tokens, the vocabulary projected for those tokens only.

        transformers' ``*ForMaskedLM`` projects every position and then ignores the unmasked ones; a model
        whose encoder and head this cannot find (neither ``cls`` nor ``lm_head``) runs that full forward."""
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        body = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
        head = next((h for h in (getattr(inner, "cls", None), getattr(inner, "lm_head", None)) if h is not None),
                    None)
        if not isinstance(body, nn.Module) or not isinstance(head, nn.Module) or body is inner:
            return model(**masked).loss
        labels = masked["labels"]
        hidden = body(input_ids=masked["input_ids"], attention_mask=masked["attention_mask"])[0]
        picked = labels != -100
        if not bool(picked.any()):
            return hidden.sum() * 0.0  # nothing masked in this batch: no signal, a graph that still backpropagates
        return F.cross_entropy(head(hidden[picked]).float(), labels[picked])

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: Examples, batch_size: int) -> dict[str, float]:
        model.eval()
        data = first_tokens(data, self.cfg.eval_tokens)
        loss_sum, tokens = 0.0, 0
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same masks every round
            for batch in batches(data, batch_size):
                masked = self._masked(batch)
                count = int((masked["labels"] != -100).sum())
                if count:
                    loss_sum += float(self._masked_loss(model, masked)) * count
                    tokens += count
        loss = loss_sum / max(tokens, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens, "num-examples": len(data)}
