"""SecAgg+ arithmetic, written once for the client mod and the server wrapper.

- **Keys**: two X25519 key pairs per client and round: ``c`` encrypts the secret shares it sends to each
  neighbour (AES-GCM under an HKDF-derived key), ``s`` agrees a pairwise mask seed with each neighbour.
- **Masks**: a client's update is quantized to integers (each coordinate clipped to ``bound``, ``bits``
  bits of resolution), multiplied by its weight and sent as
  ``y = w*q + PRG(b) + sum_{j>i} PRG(s_ij) - sum_{j<i} PRG(s_ij)`` in the ring of 64-bit integers;
  the PRG is AES-256-CTR. The pairwise masks cancel
  in the sum; the self mask ``PRG(b)`` is removed with ``b`` rebuilt from its Shamir shares.
- **Dropouts**: every client Shamir-shares (t of k + 1, flwr's ``create_shares``) its ``s`` secret key and
  its seed ``b`` among its k neighbours and itself. For a client that dropped before sending, the
  survivors' shares rebuild its ``s`` key and so the pairwise masks it left behind; for a survivor, the
  shares rebuild ``b``. A client never reveals both kinds of share of the same node.

flwr ships these primitives for its legacy workflow only; its PRG seeds numpy with 32 bits of the secret,
so the masks here come from AES-CTR instead.
"""

from __future__ import annotations

import math
import os

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["agree", "decrypt", "dequantize", "encrypt", "keypair", "neighbours", "prg", "quantize",
           "threshold_of"]

_RAW = {"encoding": serialization.Encoding.Raw, "format": serialization.PublicFormat.Raw}


def keypair() -> tuple[bytes, bytes]:
    """(private, public) X25519 key bytes."""
    private = X25519PrivateKey.generate()
    secret = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())
    return secret, private.public_key().public_bytes(**_RAW)


def agree(private: bytes, public: bytes, purpose: bytes) -> bytes:
    """A 32-byte key both ends derive alone (X25519 + HKDF-SHA256), separate per ``purpose``."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"ffm-secagg-" + purpose).derive(shared)


def encrypt(key: bytes, plaintext: bytes) -> bytes:
    """AES-GCM encryption of ``plaintext`` under a 32-byte ``key`` (nonce first)."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, None)


def decrypt(key: bytes, blob: bytes) -> bytes:
    """The plaintext of :func:`encrypt`'s output; a wrong key or tampering raises."""
    return AESGCM(key).decrypt(blob[:12], blob[12:], None)


def prg(seed: bytes, size: int) -> np.ndarray:
    """``size`` pseudo-random uint64 from a 32-byte seed: the AES-256-CTR keystream."""
    stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(8 * size))
    return np.frombuffer(stream, dtype=np.uint64).copy()


def quantize(values: np.ndarray, bound: float, bits: int) -> np.ndarray:
    """Coordinates clipped to [-bound, bound], scaled to integers in [-2^bits, 2^bits] (round to nearest)."""
    scale = float(2**bits) / bound
    return np.rint(np.clip(values.astype(np.float64), -bound, bound) * scale).astype(np.int64)


def dequantize(total: np.ndarray, bound: float, bits: int) -> np.ndarray:
    """The signed integer sum back to floats (the ring's uint64 read as two's complement)."""
    return total.view(np.int64).astype(np.float64) * (bound / float(2**bits))


def neighbours(nodes: list[int], me: int, count: int) -> list[int]:
    """SecAgg+'s sparse graph: ceil(count / 2) nodes on each side of ``me`` on the ring of sorted ids, so that
    the relation is symmetric (the pairwise masks must cancel); 0 or enough = every other node (SecAgg)."""
    ring = sorted(nodes)
    others = [n for n in ring if n != me]
    half = math.ceil(count / 2)
    if count <= 0 or 2 * half >= len(others):
        return others
    at = ring.index(me)
    return sorted({ring[(at + step) % len(ring)] for step in range(1, half + 1)}
                  | {ring[(at - step) % len(ring)] for step in range(1, half + 1)})


def threshold_of(share: float, count: int) -> int:
    """Shares needed to rebuild a secret held by ``count`` holders (at least 2, at most all)."""
    return min(count, max(2, math.ceil(share * count)))
