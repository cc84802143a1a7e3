"""Classification by a frozen language model: a prompt template around the text, and label words scored by the
LM head at the last position (a *verbalizer*). No new head: a decoder such as SmolLM2 classifies zero-shot,
and prompt tuning / prefix tuning / LoRA adapt it (peft's CAUSAL_LM methods), with the loss restricted to
the label words.

The template holds ``{text}``; the text is truncated to fit ``model.max_length`` so the template's ending
(e.g. "Topic:") is never cut. Each label word is scored by its first token (with a leading space, as it
follows the prompt); two label words with the same first token are an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ffm.errors import ConfigError
from ffm.models.backbone import load_model
from ffm.models.config import ModelConfig
from ffm.settings import items, option, require
from ffm.tasks.base import Task, TaskConfig, ensure_pad_token
from ffm.tasks.examples import Examples, batches

__all__ = ["VerbalizerClassification", "VerbalizerConfig"]


@dataclass
class VerbalizerConfig(TaskConfig):
    """The verbalizer task's keys: the prompt template and the label words."""

    name: str = "verbalizer_classification"
    template: str = option("Article: {text}\nTopic:", "prompt around each text; must contain {text}")
    verbalizer: list[str] = items("one label word per class, in label order (empty = the data set's label names)")

    def __post_init__(self) -> None:
        require("{text}" in self.template, f"task.template must contain {{text}} (got {self.template!r})")


class VerbalizerClassification(Task):
    """A frozen LM classifies by scoring label words after a prompt."""

    config = VerbalizerConfig
    columns = ("text", "label")
    primary_metric = "accuracy"
    higher_is_better = True
    peft_task_type = "CAUSAL_LM"
    prompt_slot = "{text}"

    def __init__(self, cfg: VerbalizerConfig) -> None:
        super().__init__(cfg)
        self.label_names: list[str] = []

    @property
    def prompt_template(self) -> str:
        """The template a discrete prompt search starts from (mode=prompt_search)."""
        return self.cfg.template

    def with_prompt(self, template: str, verbalizer: list[str]) -> VerbalizerClassification:
        """The same task with another template and label words (a candidate of discrete prompt search)."""
        task = VerbalizerClassification(dataclasses.replace(self.cfg, template=template, verbalizer=list(verbalizer)))
        task.label_names = self.label_names
        return task

    def build_model(
        self, model: ModelConfig, label_names: list[str], tokenizer: PreTrainedTokenizerBase, seed: int
    ) -> PreTrainedModel:
        self.label_names = list(label_names)
        return load_model(AutoModelForCausalLM, model, tokenizer, seed)

    def words(self) -> list[str]:
        """One label word per class: task.verbalizer, or the label names."""
        words = self.cfg.verbalizer or [name.lower() for name in self.label_names]
        if self.label_names and len(words) != len(self.label_names):
            raise ConfigError(f"task.verbalizer has {len(words)} words for {len(self.label_names)} classes "
                              f"({self.label_names}); give one word per class, in label order")
        return words

    def label_token_ids(self, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """The first token of each label word (distinct, or a ConfigError)."""
        ids = [tokenizer(" " + w.strip(), add_special_tokens=False)["input_ids"][0] for w in self.words()]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"task.verbalizer {self.words()}: two label words start with the same token; "
                              "choose words whose first tokens differ")
        return torch.tensor(ids, dtype=torch.long)

    def encode(self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Examples:
        ensure_pad_token(tokenizer)
        before, after = self.cfg.template.split("{text}", 1)
        head = tokenizer(before, add_special_tokens=False)["input_ids"] if before else []
        tail = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        room = max_length - len(head) - len(tail)
        if room < 1:
            raise ConfigError(f"task.template takes {len(head) + len(tail)} tokens, more than model.max_length="
                              f"{max_length}; raise model.max_length or shorten the template")
        texts = tokenizer(list(ds["text"]), add_special_tokens=False, truncation=True, max_length=room)["input_ids"]
        rows = [head + text + tail for text in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # right padding: the last real token is at length - 1
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        words = self.label_token_ids(tokenizer)
        tensors = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(ds["label"], dtype=torch.long),
                   "label_token_ids": words.expand(len(rows), -1).clone()}
        return Examples(tensors, mask.sum(dim=1))

    def _label_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, classes): the LM head's logits of each label word at each example's last real position.

        Only those B positions go through the LM head: the model returns its last hidden states (and one
        position of logits, ``logits_to_keep=1``) instead of B x T x V logits: for SmolLM2, by arithmetic, about a
        fifth of the multiply-adds per position (49,152 x 576 against ~120M for its 30 layers) and 300 MB of
        float32 logits a batch of 16 at 96 tokens (not timed). Models whose head does more than the output
        embedding (Gemma's logit soft-capping) take the full path."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        last = mask.sum(dim=1) - 1
        rows = torch.arange(len(ids))
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        config = getattr(model, "config", None)
        if isinstance(head, nn.Module) and not getattr(config, "final_logit_softcapping", None):
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states[-1][:, -ids.shape[1]:]  # soft prompts add virtual positions in front
            return head(hidden[rows, last]).gather(1, batch["label_token_ids"])
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits = logits[:, -ids.shape[1]:]
        return logits[rows, last].gather(1, batch["label_token_ids"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self._label_logits(model, batch), batch["labels"])

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: Examples, batch_size: int) -> dict[str, float]:
        """Cross-entropy over the label words, accuracy, and how many distinct classes were predicted."""
        model.eval()
        loss_sum, correct, predicted = 0.0, 0, set()
        for batch in batches(data, batch_size):
            scores = self._label_logits(model, batch)
            loss_sum += float(F.cross_entropy(scores, batch["labels"], reduction="sum"))
            guesses = scores.argmax(dim=-1)
            correct += int((guesses == batch["labels"]).sum())
            predicted.update(guesses.tolist())
        n = max(len(data), 1)
        return {"loss": loss_sum / n, "accuracy": correct / n, "predicted-classes": len(predicted),
                "num-examples": len(data)}
