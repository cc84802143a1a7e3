"""Runs signed by the federation's operator, verified on each data owner's node before anything runs.

The operator signs what a run is: the Flower App Bundle (its SHA-256, the hash the SuperLink and every node
see) and the run's whole config, with an Ed25519 key (``ffm deploy signing-keys``); ``ffm deploy run
--sign-key`` puts the signature and the signer's name into the run config (the keys ``ffm-signer`` and
``ffm-signature``, declared by ffm's app). A data owner lists the public keys it trusts in a YAML file
(``NAME: ssh-ed25519 AAAA...``, the format of flwr's ``--trusted-entities``) and starts its node with
``--trusted-keys FILE``: ffm's warm worker then refuses, with an error reply and one log line, every run that
is unsigned, signed by a key it does not trust, or whose app or config differ from what was signed.

Why ffm signs, not flwr: flwr 1.42's ``--trusted-entities`` accepts only FABs that carry a Flower Hub review
("valid_license"), which a self-hosted SuperLink never has; and a run's config (privacy off, a thousand rounds)
matters as much as its code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ffm.errors import FfmError

__all__ = ["SIGNATURE_KEY", "SIGNER_KEY", "SigningKeys", "load_trusted", "make_signing_keys", "sign_run",
           "unsigned", "verify_run"]

SIGNER_KEY = "ffm-signer"  # run config: the name of the key that signed the run
SIGNATURE_KEY = "ffm-signature"  # run config: the signature (base64)
_PREFIX = b"ffm-run-v1\n"


@dataclass(frozen=True)
class SigningKeys:
    """An operator's key pair on disk: the private key (OpenSSH, mode 600) and the public key's line."""

    private_key: Path
    public_key: Path


def make_signing_keys(directory: Path, name: str) -> SigningKeys:
    """Write ``NAME.sign.key`` and ``NAME.sign.pub`` (Ed25519); an existing pair is never overwritten."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = SigningKeys(directory / f"{name}.sign.key", directory / f"{name}.sign.pub")
    if keys.private_key.exists() or keys.public_key.exists():
        raise FfmError(f"{keys.private_key} or {keys.public_key} exists already; choose another --name or folder")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    keys.private_key.write_bytes(pem)
    os.chmod(keys.private_key, 0o600)
    line = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    keys.public_key.write_text(line.decode() + "\n")
    return keys


def unsigned(run_config: dict[str, Any]) -> dict[str, Any]:
    """The run config without the signature's own keys (what is signed)."""
    return {k: v for k, v in run_config.items() if k not in (SIGNER_KEY, SIGNATURE_KEY)}


def _message(fab: bytes, run_config: dict[str, Any]) -> bytes:
    config = json.dumps(unsigned(run_config), sort_keys=True, separators=(",", ":"), default=str)
    return _PREFIX + hashlib.sha256(fab).hexdigest().encode() + b"\n" + hashlib.sha256(config.encode()).digest()


def sign_run(private_key: Path, signer: str, fab: bytes, run_config: dict[str, Any]) -> dict[str, str]:
    """The run-config entries that sign ``fab`` (the FAB's bytes) with ``run_config`` (every key the nodes see)."""
    try:
        key = serialization.load_ssh_private_key(Path(private_key).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise FfmError(f"cannot read the signing key {private_key} ({exc}); make one with `ffm deploy "
                       "signing-keys`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FfmError(f"{private_key} is not an Ed25519 key; make one with `ffm deploy signing-keys`")
    signature = base64.b64encode(key.sign(_message(fab, run_config))).decode()
    return {SIGNER_KEY: signer, SIGNATURE_KEY: signature}


def load_trusted(path: Path) -> dict[str, Ed25519PublicKey]:
    """The public keys a node trusts: a YAML mapping of signer name to an OpenSSH ``ssh-ed25519`` line."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FfmError(f"cannot read the trusted keys {path} ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise FfmError(f"{path} must map each trusted signer's name to its public key line (ssh-ed25519 ...)")
    trusted = {}
    for name, line in raw.items():
        try:
            key = serialization.load_ssh_public_key(str(line).strip().encode())
        except ValueError:
            raise FfmError(f"{path}: the key of '{name}' is not an OpenSSH public key line") from None
        if not isinstance(key, Ed25519PublicKey):
            raise FfmError(f"{path}: the key of '{name}' is not Ed25519 (ssh-ed25519 ...)")
        trusted[str(name)] = key
    return trusted


def verify_run(fab: bytes, run_config: dict[str, Any], trusted: dict[str, Ed25519PublicKey]) -> str | None:
    """Why this run must not run on the node (unsigned, unknown signer, not what was signed), or None."""
    signer, signature = run_config.get(SIGNER_KEY, ""), run_config.get(SIGNATURE_KEY, "")
    if not signer or not signature:
        return "the run is not signed (its operator signs it: `ffm deploy run --sign-key`)"
    if signer not in trusted:
        return f"the run is signed by '{signer}', whom this node does not trust (its --trusted-keys: " \
               f"{', '.join(sorted(trusted))})"
    try:
        trusted[signer].verify(base64.b64decode(str(signature)), _message(fab, run_config))
    except (InvalidSignature, ValueError):
        return f"the signature of '{signer}' does not match this run's app and config (changed after signing)"
    return None
