"""Causal language modelling (GPT / Llama style): next-token loss, perplexity (lower is better) as the primary
metric, and a sample generation from a fixed prompt after every round."""

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
from ffm.tasks.examples import Examples, batches
from ffm.tasks.text_blocks import first_tokens, pack_blocks

__all__ = ["CausalLM", "CausalLMConfig"]


@dataclass
class CausalLMConfig(TaskConfig):
    """The causal LM's keys: the evaluation budget and the sample's prompt."""

    name: str = "causal_lm"
    eval_tokens: int = option(20000, "evaluate on at most this many held-out tokens per split (0 = all)")
    prompt: str = option("ROMEO:", "the fixed prompt of the sample written to samples.jsonl every round")
    sample_tokens: int = option(24, "tokens generated for the sample")
    sample_temperature: float = option(0.0, "0 = greedy; > 0: sampled at this temperature from the 200 likeliest "
                                       "tokens with a fixed seed (nanoGPT's sample.py: 0.8)")
    separator: bool = option(True, "an end-of-text token between examples (false: the texts are one raw stream "
                             "that carries its own breaks, as nanoGPT's character-level Shakespeare)")
    train_stride: int = option(0, "training blocks start every this many tokens and overlap (0 = one after another); "
                               "nanoGPT samples windows at every offset")

    def __post_init__(self) -> None:
        require(self.eval_tokens >= 0 and self.sample_tokens >= 0 and self.sample_temperature >= 0
                and self.train_stride >= 0,
                "task.eval_tokens, sample_tokens, sample_temperature and train_stride must be >= 0")


class CausalLM(Task):
    """Next-token prediction on packed blocks; perplexity; a greedy sample each round."""

    config = CausalLMConfig
    columns = ("text",)
    primary_metric = "perplexity"
    higher_is_better = False
    peft_task_type = "CAUSAL_LM"

    def build_model(
        self, model: ModelConfig, label_names: list[str], tokenizer: PreTrainedTokenizerBase, seed: int
    ) -> PreTrainedModel:
        return load_model(AutoModelForCausalLM, model, tokenizer, seed)

    def encode(self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Examples:
        ensure_pad_token(tokenizer)
        return pack_blocks(list(ds["text"]), tokenizer, max_length, separator=self.cfg.separator)

    def encode_train(self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Examples:
        ensure_pad_token(tokenizer)
        return pack_blocks(list(ds["text"]), tokenizer, max_length, separator=self.cfg.separator,
                           stride=self.cfg.train_stride)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: Examples, batch_size: int) -> dict[str, float]:
        """Mean next-token cross-entropy over the (bounded) held-out tokens, and its exponential."""
        model.eval()
        data = first_tokens(data, self.cfg.eval_tokens)
        loss_sum, tokens = 0.0, 0
        for batch in batches(data, batch_size):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits = logits[:, -batch["input_ids"].shape[1]:]  # soft prompts add virtual positions in front
            targets = batch["labels"][:, 1:]  # (B, T-1): token t+1 is predicted from tokens up to t
            loss_sum += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100,
                                              reduction="sum"))
            tokens += int((targets != -100).sum())
        loss = loss_sum / max(tokens, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens, "num-examples": len(data)}

    @torch.inference_mode()
    def sample(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> str | None:
        """The model's continuation of ``task.prompt``: greedy, or sampled with a fixed seed; a sample longer than
        the model's context keeps only its last ``context - 1`` tokens as it goes (nanoGPT's sample.py crops too).

        A training block of ``context`` tokens trains predictions from positions 0..context-2 only (the last
        position has no next token inside the block), so the window stops one short of the context: reading the
        never-trained last position turns the sample into noise once the window starts to slide."""
        if not self.cfg.sample_tokens:
            return None
        model.eval()
        ids = tokenizer(self.cfg.prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, T)
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 0
        if self.cfg.sample_temperature == 0 and (not context or ids.shape[1] + self.cfg.sample_tokens < context):
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=self.cfg.sample_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            return tokenizer.decode(out[0], skip_special_tokens=True)
        generator = torch.Generator().manual_seed(0)
        for _ in range(self.cfg.sample_tokens):
            window = ids[:, -(context - 1):] if context > 1 else ids
            logits = model(input_ids=window).logits[:, -1]  # (1, V)
            if self.cfg.sample_temperature == 0:
                token = logits.argmax(dim=-1, keepdim=True)
            else:
                top = torch.topk(logits / self.cfg.sample_temperature, min(200, logits.shape[-1]))
                choice = torch.multinomial(torch.softmax(top.values, dim=-1), 1, generator=generator)
                token = top.indices.gather(-1, choice)
            ids = torch.cat([ids, token], dim=1)
        return tokenizer.decode(ids[0], skip_special_tokens=True)
