"""Language-model examples: a split's texts tokenized, joined with a separator and cut into fixed blocks.

Packing is what LM pre-training does (GPT-2, BERT): no padding inside a block, one block = one example.
Blocks never mix parties, since each party's split is packed on its own.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from ffm.errors import DataError
from ffm.tasks.examples import Examples

__all__ = ["first_tokens", "pack_blocks"]


def pack_blocks(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, block: int, *, wrap: bool = False, separator: bool = True,
    stride: int = 0,
) -> Examples:
    """(N, block) ``input_ids`` / ``attention_mask`` and ``labels`` (pad -> -100); the last block may be short.

    ``wrap`` puts the tokenizer's [CLS] ... [SEP] around every block (BERT-style masked LM); ``separator`` puts
    its end-of-text token between texts (off for texts that carry their own breaks, such as a raw text stream);
    ``stride`` below the block's width starts a block every ``stride`` tokens, so blocks overlap (training on
    windows at many offsets, as nanoGPT's random windows do; 0 = one block after another).
    """
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream += [*ids, sep] if separator else ids
    width = block - 2 if wrap else block
    step = stride if 0 < stride < width else width
    chunks = [stream[i : i + width] for i in range(0, len(stream), step) if step == width or i + width <= len(stream)]
    chunks = [c for c in chunks if len(c) >= 2]
    if not chunks:
        raise DataError(f"{len(texts)} texts hold too few tokens for one block of {block}; add data")
    if wrap:
        chunks = [[tokenizer.cls_token_id, *c, tokenizer.sep_token_id] for c in chunks]
    ids = torch.full((len(chunks), block), tokenizer.pad_token_id, dtype=torch.long)
    lengths = torch.tensor([len(c) for c in chunks])
    for row, chunk in enumerate(chunks):
        ids[row, : len(chunk)] = torch.tensor(chunk)
    mask = (torch.arange(block)[None, :] < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    return Examples({"input_ids": ids, "attention_mask": mask, "labels": labels}, lengths,
                    sequence_keys=("input_ids", "attention_mask", "labels"))


def first_tokens(data: Examples, budget: int) -> Examples:
    """The leading blocks holding at most ``budget`` tokens (at least one): a bounded, fixed evaluation set."""
    if budget <= 0:
        return data
    cumulative = torch.cumsum(data.lengths, dim=0)
    n = max(1, int((cumulative <= budget).sum()))
    return Examples({k: v[:n] for k, v in data.tensors.items()}, data.lengths[:n], data.sequence_keys)
