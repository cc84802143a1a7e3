"""Batched greedy generation and the scores of what a model writes (ROUGE-L, exact match).

Prompts are grouped by length (little padding), left-padded, and generated with ``model.generate`` (its KV
cache, at most ``max_new_tokens``, stopping at the end-of-turn token): the evaluation of an instruction-tuned
decoder costs about what a bare ``generate`` loop over the same prompts costs.
"""

from __future__ import annotations

import re
import string

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

__all__ = ["exact_match", "generate", "rouge_l"]


@torch.inference_mode()
def generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]], *,
             max_new_tokens: int, batch_size: int, stop_ids: list[int] | None = None) -> list[str]:
    """The greedy reply to each prompt (token ids), decoded without special tokens, in the prompts' order."""
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_ids or [tokenizer.eos_token_id]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, i in enumerate(rows):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=stops, temperature=None, top_p=None, top_k=None)
        for row, i in enumerate(rows):
            replies[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
    return replies


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (``rouge-score``, Porter stemming), in [0, 1]."""
    return _scorer().score(reference, prediction)["rougeL"].fmeasure


_SCORER: list = []


def _scorer():
    if not _SCORER:
        from rouge_score import rouge_scorer

        _SCORER.append(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True))
    return _SCORER[0]


def _normal(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two agree up to case, punctuation and spacing (SQuAD's normalization, without articles)."""
    return float(_normal(prediction) == _normal(reference))
