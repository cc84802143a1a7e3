"""Tokenizers that no party's data shapes: built in code from a fixed public alphabet, never trained.

``bytes``: every UTF-8 byte is a token (256 of them, through the byte-to-character map GPT-2's byte-level BPE
uses, with no merges), plus the special tokens a causal LM (end of text, padding) and a masked LM ([CLS],
[SEP], [MASK]) need. Any text is representable, nothing about a party's text is learned from it, and every
process builds the identical vocabulary. For ASCII text such as Tiny Shakespeare a byte is a character, the
granularity of nanoGPT's character-level models (whose 65-character vocabulary, unlike this one, is read off
the data).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["FIXED_TOKENIZERS", "byte_tokenizer"]

SPECIALS = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<eos>", "unk_token": "<unk>",
            "cls_token": "<cls>", "sep_token": "<sep>", "mask_token": "<mask>"}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level tokenizer: the specials first (ids 0..5), then the 256 bytes."""
    specials = list(dict.fromkeys(SPECIALS.values()))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: ord(ch))
    vocab = {token: i for i, token in enumerate([*specials, *alphabet])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIALS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIALS)


FIXED_TOKENIZERS = {"bytes": byte_tokenizer}
"""``model.tokenizer`` values that name a fixed tokenizer (the empty value: the model's own)."""
