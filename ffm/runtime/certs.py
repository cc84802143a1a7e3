"""Keys for a federation: test TLS certificates (a throw-away CA and a SuperLink certificate it signs) and
SuperNode key pairs for node authentication.

The certificates are for trying TLS on a laptop or in tests only; a real federation uses certificates from
the organisation's CA. A node key pair is what flwr 1.42 expects of a SuperNode (``flwr.supercore.primitives.
asymmetric`` generates the same): an EC key on NIST P-384, the private key in OpenSSH format for
``flower-supernode --auth-supernode-private-key``, the public key as one OpenSSH line for
``flwr supernode register``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ffm.errors import FfmError
from ffm.runtime.deploy import TlsFiles

__all__ = ["NodeKeys", "make_node_keys", "make_test_certificates"]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_test_certificates(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                           days: int = 30) -> TlsFiles:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` into ``directory``; the server certificate names
    every entry of ``hosts`` (IP addresses or DNS names) as a subject alternative name."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("ffm test CA")).issuer_name(_name("ffm test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(_pem_key(server_key))
    files.server_key.chmod(0o600)
    return files


@dataclass(frozen=True)
class NodeKeys:
    """A SuperNode's key pair: the private key stays on the node, the public key goes to the SuperLink's
    operator, who registers it."""

    private_key: Path
    public_key: Path


def make_node_keys(directory: Path, name: str = "supernode") -> NodeKeys:
    """Write a SuperNode's key pair, ``NAME.key`` (private, mode 600) and ``NAME.pub``, into ``directory``;
    refuses to overwrite an existing one."""
    files = NodeKeys(directory / f"{name}.key", directory / f"{name}.pub")
    for path in (files.private_key, files.public_key):
        if path.exists():  # a registered key pair replaced by accident would lock its node out
            raise FfmError(f"{path} exists: choose another --name or folder (or delete it first)")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    files.private_key.touch(mode=0o600)
    files.private_key.chmod(0o600)  # before the secret is written: no moment it is readable by others
    files.private_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    files.public_key.write_bytes(public + f" {name}\n".encode())  # OpenSSH line: type, key, comment
    return files
