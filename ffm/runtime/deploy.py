"""Helpers for running a job on a real Flower federation: SuperLink + one SuperNode per data owner.

The ServerApp and ClientApp are the same objects the LocalGrid drives (``ffm.server:app``,
``ffm.client:app``); only the Grid changes. Everything here builds command lines, environments and small
files as pure functions (unit-tested), plus :func:`start` / :func:`stop` for the processes.

flwr 1.42 facts this relies on (checked against the installed flwr):

- ``flower-superlink --port P`` serves the Fleet, Control and Runtime APIs on ONE port; its SuperExec is
  started as ``flower-superexec`` from ``PATH``, so the virtualenv's ``bin`` must be on ``PATH``.
- every ``flower-supernode`` serves its own Runtime API on ``--port`` (default 9094): several SuperNodes on
  one machine need distinct ports.
- ``flwr run APP CONNECTION --run-config FILE.toml``: the TOML file is flattened into dotted keys, and every
  key must be declared in the app's ``[tool.flwr.app.config]`` (the SuperLink rejects unknown keys).
- with the default ``subprocess`` isolation every message starts a fresh ``flwr-clientapp`` process, so the
  backbone and data are loaded again for each message (see docs/deploy.md for timings); with
  ``--isolation process`` the node starts none and ffm's warm worker (:mod:`ffm.runtime.warm_worker`) runs
  every message in one long-lived process instead.
- SuperNode authentication: ``flower-superlink --enable-supernode-auth`` (refused without TLS) admits only
  nodes whose public key was registered through the Control API (``flwr supernode register PUBKEY
  CONNECTION``); each node signs its requests with ``--auth-supernode-private-key`` (an EC key on a NIST
  curve, OpenSSH format). An unregistered node's activation fails and it exits (code 305).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from ffm import __version__
from ffm.errors import FfmError
from ffm.runtime.signing import SIGNATURE_KEY, SIGNER_KEY
from ffm.settings import Job, flatten, scalars, to_dict

__all__ = [
    "TlsFiles",
    "app_pyproject",
    "deploy_env",
    "flower_config",
    "flwr_run_command",
    "free_ports",
    "job_toml",
    "register_command",
    "start",
    "stop",
    "superlink_command",
    "supernode_command",
    "warm_worker_command",
    "write_app",
]

CONNECTION = "ffm"  # the SuperLink connection name ffm writes into the flwr CLI's config.toml


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS federation: the CA every party trusts, the SuperLink's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago (for a federation on one machine)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _bin(name: str) -> str:
    """The flwr executable beside this Python (the virtualenv's), else whatever PATH finds."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _tls_flags(tls: TlsFiles | None, *, server: bool) -> list[str]:
    if tls is None:
        return ["--insecure"]
    if server:
        return ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                "--ssl-keyfile", str(tls.server_key)]
    return ["--root-certificates", str(tls.ca_cert)]


def superlink_command(*, host: str, port: int, database: Path | None, tls: TlsFiles | None,
                      node_auth: bool = False) -> list[str]:
    """``flower-superlink``: one port for the Fleet, Control and Runtime APIs; no runtime ``uv sync``.

    With ``node_auth`` only SuperNodes whose public key was registered (:func:`register_command`) may join;
    flwr requires TLS for it. Registrations live in the SuperLink's state: give it a ``database`` to keep
    them across restarts.
    """
    if node_auth and tls is None:
        raise FfmError("SuperNode authentication needs TLS: give the SuperLink certificates (--certs DIR)")
    cmd = [_bin("flower-superlink"), *_tls_flags(tls, server=True), "--host", host, "--port", str(port)]
    if database is not None:
        cmd += ["--database", str(database)]
    if node_auth:
        cmd.append("--enable-supernode-auth")
    return [*cmd, "--disable-runtime-dependency-installation"]


def register_command(public_key: Path, *, name: str | None = None) -> list[str]:
    """``flwr supernode register``: admit the SuperNode holding the private half of ``public_key`` (an
    OpenSSH public key file) to the federation on the ``ffm`` connection of the flwr CLI's config."""
    cmd = [_bin("flwr"), "supernode", "register", str(Path(public_key).resolve()), CONNECTION]
    return [*cmd, "--name", name] if name else cmd


def supernode_command(
    *,
    superlink: str,
    partition_id: int,
    num_partitions: int,
    runtime_port: int,
    tls: TlsFiles | None,
    data_path: Path | None = None,
    warm: bool = False,
    auth_key: Path | None = None,
    policy: Path | None = None,
    state_dir: Path | None = None,
) -> list[str]:
    """``flower-supernode`` for the data owner of partition ``partition_id`` (of ``num_partitions``).

    With ``data_path`` (that owner's folder from ``ffm deploy split``) the node's ClientApp reads that folder
    alone; without it, it re-derives its partition from the job's whole data set (a single-machine trial).
    With ``warm`` the node runs with ``--isolation process``: it starts no ClientApp processes itself, and
    :func:`warm_worker_command` (one long-lived process) serves its Runtime API instead.
    With ``auth_key`` (the node's OpenSSH private key, whose public half the SuperLink's operator registered)
    the node signs every request to a SuperLink that authenticates SuperNodes. With ``policy`` (the data owner's
    YAML, :mod:`ffm.node_policy`) the node's ClientApp checks every run against it before it trains. With
    ``state_dir`` the node keeps its state between rounds on its own disk there (:mod:`ffm.node_state`), so it
    survives a restart of the node and a resume of the run.
    """
    if not 0 <= partition_id < num_partitions:
        raise FfmError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    node_config = f"partition-id={partition_id} num-partitions={num_partitions}"
    if data_path is not None:
        node_config += f' data-path="{Path(data_path).resolve()}"'
    if policy is not None:
        node_config += f' policy-path="{Path(policy).resolve()}"'
    if state_dir is not None:
        node_config += f' state-dir="{Path(state_dir).resolve()}"'
    return [
        _bin("flower-supernode"),
        *_tls_flags(tls, server=False),
        "--superlink", superlink,
        "--port", str(runtime_port),  # this node's own Runtime API: distinct per node on one machine
        "--node-config", node_config,
        *(["--isolation", "process"] if warm else []),
        *(["--auth-supernode-private-key", str(Path(auth_key).resolve())] if auth_key is not None else []),
    ]


def gateway_command(*, listen: str, upstream: str, tls: TlsFiles | None) -> list[str]:
    """ffm's Fleet-only gateway (:mod:`ffm.runtime.gateway`) on the public address ``listen``, in front of the
    SuperLink on loopback ``upstream``: SuperNodes reach the Fleet API, nobody outside reaches the Control API."""
    cmd = [sys.executable, "-m", "ffm.runtime.gateway", "--listen", listen, "--upstream", upstream]
    return [*cmd, "--certs", str(tls.ca_cert.parent)] if tls is not None else cmd


def warm_worker_command(runtime_port: int, *, host: str = "127.0.0.1", trusted_keys: Path | None = None
                        ) -> list[str]:
    """ffm's warm ClientApp worker for the SuperNode whose Runtime API is at ``host:runtime_port``.

    The SuperNode serves its Runtime API without TLS on 127.0.0.1 (flwr's default ``--host``), the same as
    for the ``flwr-clientapp`` processes it starts in the default isolation; TLS between the SuperNode and the
    SuperLink is unaffected. (``python -m ffm.runtime.warm_worker --root-certificates`` talks TLS to a node
    that serves its Runtime API with ``--ssl-certfile``.)
    """
    cmd = [sys.executable, "-m", "ffm.runtime.warm_worker", "--runtime-api", f"{host}:{runtime_port}", "--insecure"]
    return [*cmd, "--trusted-keys", str(Path(trusted_keys).resolve())] if trusted_keys is not None else cmd


def fab_bytes(app_dir: Path) -> bytes:
    """The Flower App Bundle that ``flwr run`` builds from ``app_dir``: byte for byte (flwr builds it
    deterministically), so its SHA-256 is the hash every node sees."""
    from ffm.flwr_internals import build_fab_from_disk

    return build_fab_from_disk(app_dir)


def node_run_config(job: Job) -> dict[str, Any]:
    """The run config every node sees for ``job``: the app's declared defaults, overridden by the job's keys."""
    return {**flatten(_declared_keys()), **flatten(scalars(to_dict(job)))}


def flwr_run_command(app_dir: Path, job_file: Path, *, stream: bool = True) -> list[str]:
    """``flwr run`` of the generated app on the ``ffm`` connection, the job as a run-config TOML file."""
    cmd = [_bin("flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(job_file)]
    return [*cmd, "--stream"] if stream else cmd


def flower_config(address: str, *, tls: TlsFiles | None) -> str:
    """The flwr CLI's ``$FLWR_HOME/config.toml``: one default SuperLink connection named ``ffm``."""
    connection: dict[str, Any] = {"address": address}
    if tls is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(tls.ca_cert)
    return tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}})


def app_pyproject() -> dict[str, Any]:
    """A Flower app's ``pyproject.toml``: ffm's ServerApp/ClientApp and every key of every job declared (the
    keys of every task, method and strategy: the SuperLink refuses a run_config key the app does not declare)."""
    return {
        "project": {
            "name": "ffm-job",
            "version": "0.1.0",
            "description": "an ffm job: federated fine-tuning with ffm's ServerApp and ClientApp",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "ffm",
                    "components": {"serverapp": "ffm.server:app", "clientapp": "ffm.client:app"},
                    "config": {**_declared_keys(), SIGNER_KEY: "", SIGNATURE_KEY: ""},
                }
            },
            "ffm": {"version": __version__},  # a warm node runs only the ffm it serves
        },
    }


def job_toml(job: Job, signature: dict[str, str] | None = None) -> str:
    """The job as a ``flwr run --run-config`` TOML file (with the operator's ``signature`` entries, if signed)."""
    return tomli_w.dumps({**scalars(to_dict(job)), **(signature or {})})


def write_app(directory: Path) -> Path:
    """Write the Flower app (just a ``pyproject.toml``: the code is the installed ffm) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(tomli_w.dumps(app_pyproject()))
    return directory


def deploy_env(flwr_home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of every Flower process: its own FLWR_HOME, no telemetry, update check or ``uv sync``,
    offline Hugging Face, and the virtualenv's ``bin`` first on PATH (the SuperLink/SuperNode start
    ``flower-superexec`` and ``flwr-clientapp`` by name)."""
    env = dict(os.environ if base is None else base)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1"),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    return env


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so :func:`stop` also ends the helpers it spawns), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc; empty where there is none): flwr's SuperExec starts each
    ServerApp in a session of its own, which the SuperLink's process group does not reach."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """End a process started by :func:`start`, its process group and every process below it (a ServerApp in its
    own session): SIGTERM, then SIGKILL after ``timeout``."""
    below = descendants(proc.pid)
    try:
        _stop_group(proc, timeout)
    finally:
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _stop_group(proc: subprocess.Popen, timeout: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the group's id is the leader's pid (start_new_session)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            # Children (superexec, clientapp) may outlive the leader for a moment: end the group for good.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


def _declared_keys() -> dict[str, Any]:
    from ffm.config import declared_run_config_tree  # every plug-in: only when an app is written

    return declared_run_config_tree()
