"""The client half of SecAgg+: a Flower mod, so a SuperNode runs it as the LocalGrid does.

Stages arrive as messages carrying the ConfigRecord ``secagg`` (see :mod:`ffm.secagg.strategy`):

- ``setup`` (query): new key pairs and self-mask seed for the round; reply the two public keys.
- ``share-keys`` (query): the round's public keys; reply Shamir shares of the ``s`` key and the seed, one
  encrypted bundle per neighbour (the server routes them and cannot read them).
- ``collect`` (train): store the bundles addressed to this node, train (the ClientApp), check the update
  (finite; at most ``secagg_max_norm``), clip and add this node's share of DP noise when the job asks, then
  reply the masked, quantized, weighted update only: the plain update never leaves the node.
- ``unmask`` (query): the shares the server needs: of the ``s`` keys of nodes that dropped out, and of the
  seeds of nodes that sent. Asking for both of one node is refused.
"""

from __future__ import annotations

import os

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from ffm.flwr_internals import create_shares
from ffm.keys import ARRAYS_KEY, EPHEMERAL_PREFIX, METRICS_KEY
from ffm.privacy import noise_multiplier
from ffm.secagg.protocol import agree, decrypt, encrypt, keypair, neighbours, prg, quantize
from ffm.settings import Job

__all__ = ["MASKED_KEY", "SECAGG_KEY", "secagg_mod", "update_vector"]

SECAGG_KEY = "secagg"  # the stage's ConfigRecord, both ways
MASKED_KEY = "secagg-masked"  # the reply's ArrayRecord: one int64 vector, the masked update
STATE_KEY = EPHEMERAL_PREFIX + "secagg"  # this node's secrets of the round, in its Context.state (never on disk)


def update_vector(trained: ArrayRecord, received: ArrayRecord) -> np.ndarray:
    """The update (trained - received) flattened in sorted key order, the order the server unflattens in."""
    return np.concatenate([trained[k].numpy().astype(np.float64).ravel() - received[k].numpy().ravel()
                           for k in sorted(trained.keys())])


def _bundle(src: int, dst: int, share_s: bytes, share_b: bytes) -> bytes:
    head = src.to_bytes(8, "little") + dst.to_bytes(8, "little") + len(share_s).to_bytes(4, "little")
    return head + share_s + share_b


def _unbundle(blob: bytes) -> tuple[int, int, bytes, bytes]:
    size = int.from_bytes(blob[16:20], "little")
    src, dst = int.from_bytes(blob[:8], "little"), int.from_bytes(blob[8:16], "little")
    return src, dst, blob[20:20 + size], blob[20 + size:]


def _setup(context: Context, node: int) -> ConfigRecord:
    c_sk, c_pk = keypair()
    s_sk, s_pk = keypair()
    context.state[STATE_KEY] = ConfigRecord({"node": node, "c-sk": c_sk, "s-sk": s_sk, "b": os.urandom(32)})
    return ConfigRecord({"c-pk": c_pk, "s-pk": s_pk})


def _share_keys(context: Context, node: int, cfg: ConfigRecord) -> ConfigRecord:
    state = context.state[STATE_KEY]
    nodes = [int(n) for n in cfg["nodes"]]
    mine = neighbours(nodes, node, int(cfg["neighbours"]))
    threshold = int(cfg["threshold"])
    # One share per neighbour and one kept: a node that stays answers for its own secrets too.
    shares_s = create_shares(bytes(state["s-sk"]), threshold, len(mine) + 1)
    shares_b = create_shares(bytes(state["b"]), threshold, len(mine) + 1)
    state["own-s"], state["own-b"] = shares_s[-1], shares_b[-1]
    c_pks = dict(zip(nodes, cfg["c-pks"], strict=True))
    blobs = [encrypt(agree(bytes(state["c-sk"]), bytes(c_pks[j]), b"shares"), _bundle(node, j, s, b))
             for j, s, b in zip(mine, shares_s[:-1], shares_b[:-1], strict=True)]
    state["nodes"], state["s-pks"], state["c-pks"] = nodes, list(cfg["s-pks"]), list(cfg["c-pks"])
    state["neighbours"] = int(cfg["neighbours"])
    return ConfigRecord({"dst": mine, "ct": blobs})


def _store_shares(context: Context, node: int, cfg: ConfigRecord) -> None:
    state = context.state[STATE_KEY]
    c_pks = dict(zip(state["nodes"], state["c-pks"], strict=True))
    srcs, held_s, held_b = [], [], []
    for src, blob in zip(cfg["src"], cfg["ct"], strict=True):
        sender, dst, share_s, share_b = _unbundle(decrypt(agree(bytes(state["c-sk"]), bytes(c_pks[int(src)]),
                                                                b"shares"), bytes(blob)))
        if sender != int(src) or dst != node:
            raise ValueError(f"secure aggregation: a share bundle claims {sender}->{dst}, routed {src}->{node}")
        srcs.append(sender)
        held_s.append(share_s)
        held_b.append(share_b)
    srcs.append(node)
    held_s.append(bytes(state["own-s"]))
    held_b.append(bytes(state["own-b"]))
    state["held-src"], state["held-s"], state["held-b"] = srcs, held_s, held_b


def _mask(job: Job, context: Context, node: int, delta: np.ndarray, weight: int) -> np.ndarray:
    dp = job.privacy
    state = context.state[STATE_KEY]
    values = (quantize(delta, dp.secagg_bound, dp.secagg_bits) * weight).view(np.uint64)
    masked = values + prg(bytes(state["b"]), len(values))
    s_pks = dict(zip(state["nodes"], state["s-pks"], strict=True))
    for other in neighbours(list(state["nodes"]), node, int(state["neighbours"])):
        mask = prg(agree(bytes(state["s-sk"]), bytes(s_pks[other]), b"mask"), len(values))
        masked = masked + mask if node < other else masked - mask  # uint64: arithmetic modulo 2^64
    return masked


def _private_delta(job: Job, delta: np.ndarray, participants: int) -> np.ndarray:
    """Clip to privacy.clipping_norm and add this client's share of the Gaussian noise (distributed DP: the
    participants' shares sum to std z x clipping_norm, all before masking)."""
    dp = job.privacy
    norm = float(np.linalg.norm(delta))
    delta = delta * min(1.0, dp.clipping_norm / max(norm, 1e-12))
    std = noise_multiplier(job) * dp.clipping_norm / np.sqrt(max(1, participants))
    return delta + np.random.default_rng().normal(0.0, std, size=delta.shape)


def _collect(job: Job, msg: Message, context: Context, call_next: ClientAppCallable, node: int) -> Message:
    cfg = msg.content.config_records[SECAGG_KEY]
    _store_shares(context, node, cfg)
    received = msg.content[ARRAYS_KEY]
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    delta = update_vector(reply.content[ARRAYS_KEY], received)
    if not np.isfinite(delta).all():
        raise ValueError("secure aggregation: the update holds NaN or inf; not sent")
    dp = job.privacy
    if dp.secagg_max_norm > 0 and float(np.linalg.norm(delta)) > dp.secagg_max_norm:
        raise ValueError(f"secure aggregation: update norm {np.linalg.norm(delta):.3g} is above "
                         f"privacy.secagg_max_norm={dp.secagg_max_norm}; not sent")
    private = dp.clipping == "fixed"
    if private:
        delta = _private_delta(job, delta, len(context.state[STATE_KEY]["nodes"]))
    weight = 1 if private else int(reply.content[METRICS_KEY]["num-examples"])
    masked = _mask(job, context, node, delta, weight)
    content = RecordDict({key: record for key, record in reply.content.items() if key != ARRAYS_KEY})
    content[MASKED_KEY] = ArrayRecord({"vector": Array(masked.view(np.int64))})
    content[SECAGG_KEY] = ConfigRecord({"weight": weight})
    return Message(content, reply_to=msg)


def _unmask(context: Context, cfg: ConfigRecord) -> ConfigRecord:
    dropped, survivors = {int(n) for n in cfg["dropped"]}, {int(n) for n in cfg["survivors"]}
    if dropped & survivors:
        raise ValueError("secure aggregation: asked to reveal both secrets of one node; refused")
    state = context.state[STATE_KEY]
    held = list(zip(state["held-src"], state["held-s"], state["held-b"], strict=True))
    out = {"s-src": [int(src) for src, _, _ in held if int(src) in dropped],
           "s-share": [bytes(s) for src, s, _ in held if int(src) in dropped],
           "b-src": [int(src) for src, _, _ in held if int(src) in survivors],
           "b-share": [bytes(b) for src, _, b in held if int(src) in survivors]}
    del context.state[STATE_KEY]  # the round is over: its secrets go
    return ConfigRecord(out)


def secagg_mod(job: Job) -> Mod:
    """The mod that runs SecAgg+'s client stages around the ClientApp (outermost: it masks the final update)."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        cfg = msg.content.config_records.get(SECAGG_KEY)
        if cfg is None:
            return call_next(msg, context)
        node = int(msg.metadata.dst_node_id)
        stage = str(cfg["stage"])
        if stage == "collect":
            return _collect(job, msg, context, call_next, node)
        if stage == "setup":
            out = _setup(context, node)
        elif stage == "share-keys":
            out = _share_keys(context, node, cfg)
        elif stage == "unmask":
            out = _unmask(context, cfg)
        else:
            raise ValueError(f"secure aggregation: unknown stage '{stage}'")
        return Message(RecordDict({SECAGG_KEY: out}), reply_to=msg)

    return mod
