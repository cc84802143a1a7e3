"""Instruction tuning (supervised fine-tuning) of a decoder on chat examples: FedIT.

Each example is a conversation (``messages``, see :mod:`ffm.data.chat`) rendered with the model's chat template;
the loss is the next-token cross-entropy on the assistant's tokens only (the prompt's are masked). Evaluation on
held-out conversations: the perplexity of the responses, and generation (greedy, at most ``task.max_new_tokens``,
KV cache) scored against the reference reply by ROUGE-L (the primary metric) and exact match (for answers that
are a label word). A few prompts, their generations and references are the round's sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ffm.models.backbone import load_model
from ffm.models.config import ModelConfig
from ffm.settings import option, require
from ffm.tasks.base import Task, TaskConfig, ensure_pad_token
from ffm.tasks.chat import fit, prompt_ids
from ffm.tasks.examples import Examples, batches
from ffm.tasks.generation import exact_match, generate, rouge_l

__all__ = ["Instruction", "InstructionConfig", "padded", "response_logps"]


@dataclass
class InstructionConfig(TaskConfig):
    """Instruction tuning's keys: the template of a tokenizer without one, and the generation budget."""

    name: str = "instruction"
    template: str = option("", "for a tokenizer without a chat template: the text around each user turn, with "
                           "{prompt} (e.g. '### Instruction:\\n{prompt}\\n\\n### Response:\\n'); empty = the "
                           "tokenizer's own chat template")
    max_new_tokens: int = option(32, "evaluation: tokens generated at most per reply (greedy, stops at end of turn)")
    eval_generate: int = option(64, "evaluation: held-out examples whose replies are generated and scored per split "
                                "(0 = all); the response perplexity uses every example")
    samples: int = option(3, "prompts whose generations are written to samples.jsonl each evaluated round")

    def __post_init__(self) -> None:
        require(self.max_new_tokens >= 1 and self.eval_generate >= 0 and self.samples >= 0,
                "task.max_new_tokens must be >= 1, task.eval_generate and task.samples >= 0")
        require(not self.template or "{prompt}" in self.template,
                f"task.template must hold {{prompt}} (where each user turn goes), got {self.template!r}")


def padded(rows: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) right-padded ids of ``rows`` and their lengths."""
    width = max(1, max((len(r) for r in rows), default=1))
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out, torch.tensor([len(r) for r in rows], dtype=torch.long)


def response_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's labelled tokens, their count): the quantity DPO compares."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logits = logits[:, -input_ids.shape[1]:]  # soft prompts add virtual positions in front
    targets = labels[:, 1:]
    token = -F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                             reduction="none").view(targets.shape)
    counted = targets != -100
    return (token * counted).sum(dim=1), counted.sum(dim=1)


class Instruction(Task):
    """Supervised fine-tuning on chat examples: loss on the responses; ROUGE-L of greedy generations."""

    config = InstructionConfig
    columns = ("messages",)
    primary_metric = "rougeL"
    higher_is_better = True
    peft_task_type = "CAUSAL_LM"

    def __init__(self, cfg: InstructionConfig) -> None:
        super().__init__(cfg)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.last_samples: list[dict[str, str]] = []

    def build_model(self, model: ModelConfig, label_names: list[str], tokenizer: PreTrainedTokenizerBase,
                    seed: int) -> PreTrainedModel:
        self.tokenizer = tokenizer
        return load_model(AutoModelForCausalLM, model, tokenizer, seed)

    def encode(self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Examples:
        ensure_pad_token(tokenizer)
        self.tokenizer = tokenizer
        ids, labels, prompts, references = [], [], [], []
        for messages in ds["messages"]:
            kept, rendered = fit(tokenizer, messages, max_length, self.cfg.template)
            ids.append(rendered.ids)
            labels.append([t if mine else -100 for t, mine in zip(rendered.ids, rendered.assistant, strict=True)])
            last = max(i for i, m in enumerate(kept) if m["role"] == "assistant")
            prompts.append(prompt_ids(tokenizer, kept[:last], self.cfg.template)[-max_length:])
            references.append(list(tokenizer(kept[last]["content"], add_special_tokens=False)["input_ids"]))
        return _examples(ids, labels, prompts, references, tokenizer.pad_token_id)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: Examples, batch_size: int) -> dict[str, float]:
        model.eval()
        logp, tokens = 0.0, 0
        for batch in batches(data, batch_size):
            summed, counted = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            logp += float(summed.sum())
            tokens += int(counted.sum())
        loss = -logp / max(tokens, 1)
        scores = self.generation_scores(model, data, batch_size)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), **scores, "num-examples": len(data)}

    def generation_scores(self, model: nn.Module, data: Examples, batch_size: int) -> dict[str, float]:
        """ROUGE-L and exact match of greedy replies to the first ``task.eval_generate`` prompts."""
        count = len(data) if not self.cfg.eval_generate else min(len(data), self.cfg.eval_generate)
        tokenizer = self.tokenizer
        prompts = [data.tensors["prompt_ids"][i, : int(data.tensors["prompt_lengths"][i])].tolist()
                   for i in range(count)]
        references = [tokenizer.decode(data.tensors["reference_ids"][i, : int(data.tensors["reference_lengths"][i])],
                                       skip_special_tokens=True).strip() for i in range(count)]
        replies = generate(model, tokenizer, prompts, max_new_tokens=self.cfg.max_new_tokens, batch_size=batch_size)
        self.last_samples = [{"prompt": tokenizer.decode(prompts[i], skip_special_tokens=True)[-300:],
                              "reply": replies[i], "reference": references[i]}
                             for i in range(min(self.cfg.samples, count))]
        return {"rougeL": sum(map(rouge_l, replies, references)) / max(count, 1),
                "exact_match": sum(map(exact_match, replies, references)) / max(count, 1), "generated": count}

    def sample(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> str | None:
        """The last evaluation's first prompts with the model's replies and the references."""
        if not self.last_samples:
            return None
        return "\n\n".join(f"PROMPT: ...{s['prompt']}\nREPLY: {s['reply']}\nREFERENCE: {s['reference']}"
                           for s in self.last_samples)


def _examples(ids: list[list[int]], labels: list[list[int]], prompts: list[list[int]],
              references: list[list[int]], pad: int) -> Examples:
    input_ids, lengths = padded(ids, pad)
    label_ids, _ = padded(labels, -100)
    prompt_tensor, prompt_lengths = padded(prompts, pad)
    reference_tensor, reference_lengths = padded(references, pad)
    attention = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    return Examples({"input_ids": input_ids, "attention_mask": attention, "labels": label_ids,
                     "prompt_ids": prompt_tensor, "prompt_lengths": prompt_lengths,
                     "reference_ids": reference_tensor, "reference_lengths": reference_lengths},
                    lengths, sequence_keys=("input_ids", "attention_mask", "labels"))
