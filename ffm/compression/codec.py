"""Encodings of one update tensor into the arrays that travel, and back.

- ``fp16`` / ``bf16``: half precision (bf16 travels as its 16-bit pattern: numpy has no bfloat16);
- ``int8`` / ``int4``: symmetric per-tensor quantization to 2^(b-1) - 1 levels each side with stochastic rounding
  (unbiased: E[decode] = the update), 4-bit packed two to a byte, plus one float32 scale;
- ``topk``: the ``fraction`` largest-magnitude entries as (int32 index, fp16 value) pairs.

Parts are named ``NAME`` (the payload) and ``NAME@scale`` / ``NAME@index`` (side information), so one
ArrayRecord carries a whole encoded state. Why by hand: Flower and PyTorch have no update codecs (torch's
quantization targets inference kernels, not wire formats with stochastic rounding).
"""

from __future__ import annotations

import torch

from ffm.config import CODECS

__all__ = ["CODECS", "bound", "decode", "encode"]

_LEVELS = {"int8": 127, "int4": 7}


def _quantize(x: torch.Tensor, levels: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().max().clamp_min(1e-12) / levels
    scaled = x / scale
    noise = torch.rand(x.shape, generator=generator, dtype=scaled.dtype)
    q = torch.floor(scaled + noise).clamp_(-levels, levels).to(torch.int8)
    return q, scale.reshape(1).float()


def _pack4(q: torch.Tensor) -> torch.Tensor:
    flat = (q.flatten().to(torch.int16) + 8).to(torch.uint8)  # -7..7 -> 1..15
    if flat.numel() % 2:
        flat = torch.cat([flat, torch.zeros(1, dtype=torch.uint8)])
    return flat[0::2] | (flat[1::2] << 4)


def _unpack4(packed: torch.Tensor, count: int) -> torch.Tensor:
    both = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()[:count]
    return both.to(torch.int16) - 8


def encode(name: str, x: torch.Tensor, codec: str, generator: torch.Generator,
           fraction: float = 0.01) -> dict[str, torch.Tensor]:
    """The parts that carry ``x`` (a float tensor) under ``codec``."""
    if codec == "fp16":
        return {name: x.to(torch.float16)}
    if codec == "bf16":
        return {name: x.to(torch.bfloat16).view(torch.int16)}
    if codec in _LEVELS:
        q, scale = _quantize(x.float(), _LEVELS[codec], generator)
        return {name: q if codec == "int8" else _pack4(q), f"{name}@scale": scale}
    if codec == "topk":
        flat = x.flatten()
        k = max(1, round(fraction * flat.numel()))
        index = flat.abs().topk(k).indices
        return {name: flat[index].to(torch.float16), f"{name}@index": index.to(torch.int32)}
    raise ValueError(f"unknown codec '{codec}' ({', '.join(CODECS)})")


def decode(name: str, parts: dict[str, torch.Tensor], codec: str, like: torch.Tensor) -> torch.Tensor:
    """The tensor (shape and dtype of ``like``) that ``parts`` encode."""
    payload = parts[name]
    if codec == "fp16":
        out = payload.float()
    elif codec == "bf16":
        out = payload.view(torch.bfloat16).float()
    elif codec in _LEVELS:
        q = payload.to(torch.int16) if codec == "int8" else _unpack4(payload, like.numel())
        out = q.float() * parts[f"{name}@scale"]
    elif codec == "topk":
        out = torch.zeros(like.numel(), dtype=torch.float32)
        out[parts[f"{name}@index"].long()] = payload.float()
    else:
        raise ValueError(f"unknown codec '{codec}' ({', '.join(CODECS)})")
    return out.reshape(like.shape).to(like.dtype)


def bound(x: torch.Tensor, codec: str) -> float:
    """The largest error any entry of decode(encode(x)) can have (top-k: the largest entry it may drop)."""
    peak = float(x.abs().max()) if x.numel() else 0.0
    if codec in _LEVELS:
        return peak / _LEVELS[codec]  # one quantization step (stochastic rounding moves at most a step)
    if codec == "fp16":
        return peak * 2.0**-11
    if codec == "bf16":
        return peak * 2.0**-8
    return peak  # top-k drops entries up to the k-th largest magnitude
