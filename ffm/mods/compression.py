"""Mod 'compression': each update travels encoded by ``client.compression`` (see :mod:`ffm.compression`); the
job switches it on outermost whenever ``client.compression`` names a codec."""

from __future__ import annotations

from dataclasses import dataclass

from ffm.compression import CODECS, compression_mod
from ffm.mods.spec import ModSpec, Place
from ffm.privacy import masks_updates
from ffm.settings import CHECKS, Job, option, require

__all__ = ["COMPRESSION", "CompressionConfig"]


@dataclass
class CompressionConfig:
    """What a client's update travels as."""

    compression: str = option("none", "what a client's update travels as: none, or a codec (fp16, bf16, int8, int4 "
                              "with stochastic rounding, topk of client.topk_fraction of the entries); decoded by "
                              "the server", choices=lambda: ["none", *CODECS.names()])
    error_feedback: bool = option(True, "compression: keep what was not sent in the node state and add it to the "
                                  "next update (the sum over rounds stays unbiased)")


def _build(job: Job):
    client = job.client
    return compression_mod(client.compression, fraction=client.topk_fraction, feedback=client.error_feedback,
                           seed=job.seed)


def _implied(job: Job) -> Place | None:
    return "outer" if job.client.compression != "none" else None  # it encodes what the other mods leave


COMPRESSION = ModSpec(_build, config=CompressionConfig, implied=_implied)


def check_compression_is_visible(job: Job) -> None:
    """A masked sum cannot be decoded per client: compression and secure aggregation exclude each other."""
    masked = masks_updates(job)
    require(job.client.compression == "none" or not masked,
            f"client.compression={job.client.compression} cannot run with {masked}: SecAgg+ sums updates in its own "
            "quantized ring encoding (privacy.secagg_bits), which is its compression")


CHECKS.register("compression_needs_visible_updates", check_compression_is_visible)
