"""Encodings of one update tensor into the arrays that travel, and back: one small class per codec, registered in
:data:`CODECS` by the name ``client.compression`` takes.

- ``fp16`` / ``bf16``: half precision (bf16 travels as its 16-bit pattern: numpy has no bfloat16);
- ``int8`` / ``int4``: symmetric per-tensor quantization to 2^(b-1) - 1 levels each side with stochastic rounding
  (unbiased: E[decode] = the update), 4-bit packed two to a byte, plus one float32 scale;
- ``topk``: the ``client.topk_fraction`` largest-magnitude entries as (int32 index, fp16 value) pairs.

Parts are named ``NAME`` (the payload) and ``NAME@scale`` / ``NAME@index`` (side information), so one
ArrayRecord carries a whole encoded state. Why by hand: Flower and PyTorch have no update codecs (torch's
quantization targets inference kernels, not wire formats with stochastic rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ffm.registry import Registry
from ffm.settings import option, require

__all__ = ["CODECS", "Codec", "bound", "decode", "encode"]


class Codec:
    """One encoding. ``config``: the keys it adds to the ``client`` section (None: it has none)."""

    config: ClassVar[type | None] = None

    def encode(self, name: str, x: torch.Tensor, generator: torch.Generator,
               fraction: float) -> dict[str, torch.Tensor]:
        """The parts that carry ``x`` (a float tensor)."""
        raise NotImplementedError

    def decode(self, name: str, parts: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """The float32 tensor (of ``like``'s shape) that ``parts`` encode."""
        raise NotImplementedError

    def bound(self, x: torch.Tensor) -> float:
        """The largest error any entry of decode(encode(x)) can have."""
        raise NotImplementedError


def _peak(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


class Half(Codec):
    """IEEE half precision: 11 significant bits."""

    def encode(self, name: str, x: torch.Tensor, generator: torch.Generator,
               fraction: float) -> dict[str, torch.Tensor]:
        return {name: x.to(torch.float16)}

    def decode(self, name: str, parts: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        return parts[name].float()

    def bound(self, x: torch.Tensor) -> float:
        return _peak(x) * 2.0**-11


class BFloat16(Codec):
    """bfloat16: float32's range, 8 significant bits; sent as its int16 bit pattern."""

    def encode(self, name: str, x: torch.Tensor, generator: torch.Generator,
               fraction: float) -> dict[str, torch.Tensor]:
        return {name: x.to(torch.bfloat16).view(torch.int16)}

    def decode(self, name: str, parts: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        return parts[name].view(torch.bfloat16).float()

    def bound(self, x: torch.Tensor) -> float:
        return _peak(x) * 2.0**-8


class Quantized(Codec):
    """Symmetric per-tensor quantization to ``levels`` steps each side, stochastic rounding; 4-bit packs two
    values to a byte."""

    def __init__(self, levels: int, *, packed: bool) -> None:
        self.levels, self.packed = levels, packed

    def encode(self, name: str, x: torch.Tensor, generator: torch.Generator,
               fraction: float) -> dict[str, torch.Tensor]:
        x = x.float()
        scale = x.abs().max().clamp_min(1e-12) / self.levels
        scaled = x / scale
        noise = torch.rand(x.shape, generator=generator, dtype=scaled.dtype)
        q = torch.floor(scaled + noise).clamp_(-self.levels, self.levels).to(torch.int8)
        return {name: _pack4(q) if self.packed else q, f"{name}@scale": scale.reshape(1).float()}

    def decode(self, name: str, parts: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        payload = parts[name]
        q = _unpack4(payload, like.numel()) if self.packed else payload.to(torch.int16)
        return q.float() * parts[f"{name}@scale"]

    def bound(self, x: torch.Tensor) -> float:
        return _peak(x) / self.levels  # one quantization step (stochastic rounding moves at most a step)


@dataclass
class TopKConfig:
    """The top-k codec's key."""

    topk_fraction: float = option(0.01, "compression=topk: share of each tensor's entries sent (the largest in "
                                  "magnitude)")

    def __post_init__(self) -> None:
        require(0.0 < self.topk_fraction <= 1.0, f"client.topk_fraction must be in (0, 1], got {self.topk_fraction}")


class TopK(Codec):
    """The largest-magnitude share of the entries, as (int32 index, fp16 value) pairs; the rest read as zero."""

    config = TopKConfig

    def encode(self, name: str, x: torch.Tensor, generator: torch.Generator,
               fraction: float) -> dict[str, torch.Tensor]:
        flat = x.flatten()
        k = max(1, round(fraction * flat.numel()))
        index = flat.abs().topk(k).indices
        return {name: flat[index].to(torch.float16), f"{name}@index": index.to(torch.int32)}

    def decode(self, name: str, parts: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(like.numel(), dtype=torch.float32)
        out[parts[f"{name}@index"].long()] = parts[name].float()
        return out

    def bound(self, x: torch.Tensor) -> float:
        return _peak(x)  # top-k drops entries up to the k-th largest magnitude


def _pack4(q: torch.Tensor) -> torch.Tensor:
    flat = (q.flatten().to(torch.int16) + 8).to(torch.uint8)  # -7..7 -> 1..15
    if flat.numel() % 2:
        flat = torch.cat([flat, torch.zeros(1, dtype=torch.uint8)])
    return flat[0::2] | (flat[1::2] << 4)


def _unpack4(packed: torch.Tensor, count: int) -> torch.Tensor:
    both = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()[:count]
    return both.to(torch.int16) - 8


CODECS: Registry[Codec] = Registry("client.compression")
"""Update codecs by name: one class plus one ``CODECS.register`` line."""
CODECS.register("fp16", Half())
CODECS.register("bf16", BFloat16())
CODECS.register("int8", Quantized(127, packed=False))
CODECS.register("int4", Quantized(7, packed=True))
CODECS.register("topk", TopK())


def encode(name: str, x: torch.Tensor, codec: str, generator: torch.Generator,
           fraction: float = 0.01) -> dict[str, torch.Tensor]:
    """The parts that carry ``x`` (a float tensor) under ``codec``."""
    return CODECS[codec].encode(name, x, generator, fraction)


def decode(name: str, parts: dict[str, torch.Tensor], codec: str, like: torch.Tensor) -> torch.Tensor:
    """The tensor (shape and dtype of ``like``) that ``parts`` encode."""
    return CODECS[codec].decode(name, parts, like).reshape(like.shape).to(like.dtype)


def bound(x: torch.Tensor, codec: str) -> float:
    """The largest error any entry of decode(encode(x)) can have (top-k: the largest entry it may drop)."""
    return CODECS[codec].bound(x)
