"""Client side: encode the update of each train reply (with error feedback); server side: decode it.

The mod sends ``encode(trained - received + residual)`` and keeps ``residual <- that - decode(sent)`` in the
node's state (error feedback, Seide et al. 2014 / Karimireddy et al. 2019): what one round's compression
drops is added to the next round's update, so the decoded updates sum, over rounds, to the true ones up to
the last residual. The server adds each decoded update to the global state it sent, before the guard's
checks, so every strategy aggregates ordinary states. Only the ``arrays`` record is encoded (a SCAFFOLD
control variate travels as it is); bytes up are counted as they travel, encoded.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from ffm.compression.codec import decode, encode
from ffm.keys import ARRAYS_KEY, CONFIG_KEY, PARTITION_ID, SERVER_ROUND, Salt, derive_seed

__all__ = ["RESIDUAL_KEY", "compress", "compression_mod", "decode_reply"]

RESIDUAL_KEY = "compression-residual"  # node state: what compression has not sent yet


def compression_mod(codec: str, *, fraction: float, feedback: bool, seed: int) -> Mod:
    """A mod that sends each train reply's update encoded by ``codec`` (with error feedback when ``feedback``)."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        received = msg.content[ARRAYS_KEY].to_torch_state_dict()
        reply = call_next(msg, context)
        if reply.has_error() or ARRAYS_KEY not in reply.content.array_records:
            return reply
        party = int(context.node_config.get(PARTITION_ID, 0))
        server_round = int(msg.content[CONFIG_KEY][SERVER_ROUND])
        generator = torch.Generator().manual_seed(derive_seed(seed, server_round, Salt.COMPRESSION, party))
        state = context.state
        residual = state[RESIDUAL_KEY].to_torch_state_dict() if RESIDUAL_KEY in state.array_records else {}
        parts: dict[str, torch.Tensor] = {}
        kept: dict[str, torch.Tensor] = {}
        for name, trained in reply.content[ARRAYS_KEY].to_torch_state_dict().items():
            if not trained.is_floating_point() or name not in received:
                parts[name] = trained
                continue
            update = trained.float() - received[name].float()
            carried = residual.get(name) if feedback else None
            encoded, kept[name] = compress(name, update, carried, codec, generator, fraction)
            parts.update(encoded)
        if feedback:
            state[RESIDUAL_KEY] = ArrayRecord(kept)
        reply.content[ARRAYS_KEY] = ArrayRecord(parts)
        return reply

    return mod


def compress(name: str, update: torch.Tensor, residual: torch.Tensor | None, codec: str,
             generator: torch.Generator, fraction: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(the parts sent for ``update`` plus the carried ``residual``, the new residual: what they left out)."""
    if residual is not None and residual.shape == update.shape:  # a grown head starts its residual anew
        update = update + residual
    encoded = encode(name, update, codec, generator, fraction)
    return encoded, update - decode(name, encoded, codec, update)


def decode_reply(sent: dict[str, torch.Tensor], record: ArrayRecord, codec: str) -> ArrayRecord:
    """The trained state a client's encoded reply stands for: the state ``sent`` plus each decoded update."""
    parts = record.to_torch_state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, base in sent.items():
        if name not in parts:
            raise ValueError(f"the compressed update has no '{name}'")
        if not base.is_floating_point():
            out[name] = parts[name]
            continue
        try:
            out[name] = (base.float() + decode(name, parts, codec, base.float())).to(base.dtype)
        except (KeyError, RuntimeError, IndexError) as exc:
            raise ValueError(f"'{name}' is not a {codec} update of shape {tuple(base.shape)} ({exc})") from None
    return ArrayRecord(out)
