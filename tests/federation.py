"""A real Flower federation for tests: a SuperLink and SuperNodes as OS processes on free loopback ports.

Not a test module: the tests of real federations (tests/test_deploy*.py, test_warm_worker.py, ...) share it,
and its helpers that read what a run left, to compare a deployed run with the LocalGrid's.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from conftest import checkpoint_state

from ffm.config import JobConfig
from ffm.run_dir import RunDirectory
from ffm.runtime.certs import NodeKeys, make_node_keys
from ffm.runtime.deploy import (
    TlsFiles,
    deploy_env,
    fab_bytes,
    flower_config,
    flwr_run_command,
    free_ports,
    gateway_command,
    job_toml,
    node_run_config,
    start,
    stop,
    superlink_command,
    supernode_command,
    write_app,
)
from ffm.runtime.signing import sign_run


def nothing_listens_on(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0  # refused: no listening socket is left


def group_is_gone(proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    """No process is left in ``proc``'s group (start() gives each its own); killed children may take a
    moment to be reaped by init."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


def wait_for(condition: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"{what}: {log.name} exited early:\n{tail(log)}")
        time.sleep(0.5)
    raise AssertionError(f"{what}: not after {timeout} s; {log.name}:\n{tail(log)}")


@dataclass
class Federation:
    """A SuperLink and one SuperNode per partition, as OS processes on free loopback ports."""

    root: Path
    tls: TlsFiles | None
    link_port: int
    env: dict[str, str]
    logs: Path
    nodes: list[subprocess.Popen] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)  # every process started, the SuperLink first
    registered: list[int] = field(default_factory=list)  # node ids the SuperLink gave registered public keys
    public_port: int = 0  # with a gateway: the Fleet-only address the nodes dial (else the SuperLink's own port)

    def register(self, *keys: NodeKeys, port: int | None = None) -> list[int]:
        """`ffm deploy register` of nodes' public keys (side by side) at ``port`` (default: the SuperLink's own,
        the operator's); returns the node ids the SuperLink gave."""
        assert self.tls is not None, "node authentication needs TLS"
        link, certs = f"127.0.0.1:{port or self.link_port}", str(self.tls.ca_cert.parent)
        procs = [subprocess.Popen([sys.executable, "-m", "ffm", "deploy", "register", str(key.public_key),
                                   "--superlink", link, "--certs", certs], env=self.env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for key in keys]
        ids = []
        for proc in procs:
            out = proc.communicate(timeout=60)[0]
            found = re.search(r"SuperNode (\d+) registered", out)
            assert proc.returncode == 0 and found, out
            ids.append(int(found.group(1)))
        self.registered += ids
        return ids

    def submit(self, job: JobConfig, *, sign: tuple[Path, str] | None = None, log: str = "flwr-run.log"
               ) -> subprocess.Popen:
        """``flwr run`` of ``job`` in the background (signed with ``sign`` = (key, signer) when given); its
        output goes to logs/``log``."""
        app = write_app(self.root / "app")
        signature = sign_run(sign[0], sign[1], fab_bytes(app), node_run_config(job)) if sign else None
        (self.root / "job.toml").write_text(job_toml(job, signature))
        proc = start(flwr_run_command(app, self.root / "job.toml"), self.env, self.logs / log)
        self.procs.append(proc)
        return proc

    def run(self, job: JobConfig, timeout: float) -> float:
        """Submit ``job`` and wait for ``flwr run`` to end; returns its seconds; fails on a non-zero exit."""
        started, log = time.monotonic(), self.logs / "flwr-run.log"
        proc = self.submit(job)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"flwr run: not done after {timeout} s:\n{tail(log)}") from None
        assert code == 0, tail(log)
        return time.monotonic() - started


def _node_command(link: str, pid: int, num_nodes: int, port: int, tls: TlsFiles | None, data: Path | None,
                  warm: bool, key: NodeKeys | None = None, trusted: Path | None = None) -> list[str]:
    if not warm:
        return supernode_command(superlink=link, partition_id=pid, num_partitions=num_nodes, runtime_port=port,
                                 tls=tls, data_path=data, auth_key=key.private_key if key else None)
    # `ffm deploy supernode --warm`: the SuperNode and ffm's long-lived ClientApp worker, ended together
    cmd = [sys.executable, "-m", "ffm", "deploy", "supernode", "--warm", "--superlink", link,
           "--partition-id", str(pid), "--num-partitions", str(num_nodes), "--port", str(port)]
    if tls is not None:
        cmd += ["--certs", str(tls.ca_cert.parent)]
    if key is not None:
        cmd += ["--auth-key", str(key.private_key)]
    if trusted is not None:
        cmd += ["--trusted-keys", str(trusted)]
    return cmd + (["--data-path", str(data)] if data is not None else [])


@contextmanager
def federation(
    root: Path,
    *,
    num_nodes: int = 3,
    tls: TlsFiles | None = None,
    data_paths: list[Path] | None = None,
    warm: bool = False,
    node_auth: bool = False,
    gateway: bool = False,
    trusted: Path | None = None,
) -> Iterator[Federation]:
    """Start a SuperLink and ``num_nodes`` SuperNodes (partition ids 0..N-1; node k reads ``data_paths[k]``
    when given; ``warm``: `ffm deploy supernode --warm`) and wait until every node has registered (and its
    warm worker serves); on exit end every process by its group and check none is left and the port is free.
    ``node_auth`` (needs ``tls``): the SuperLink admits only registered nodes; node k gets a key pair
    (``root/keys/node-k.key``), its public key is registered with `ffm deploy register` before it starts.
    ``gateway``: `ffm deploy superlink`'s layout, the SuperLink on its own (the operator's) port and ffm's
    Fleet-only gateway on the public port the nodes dial. ``trusted`` (with ``warm``): the nodes' trusted keys."""
    link_port, public_port, *node_ports = free_ports(2 + num_nodes)
    home = root / "flwr-home"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(flower_config(f"127.0.0.1:{link_port}", tls=tls))
    fed = Federation(root, tls, link_port, deploy_env(home), root / "logs")
    fed.public_port = public_port if gateway else link_port
    try:
        cmd = superlink_command(host="127.0.0.1", port=link_port, database=root / "link.db", tls=tls,
                                node_auth=node_auth)
        fed.procs.append(start(cmd, fed.env, fed.logs / "superlink.log"))
        if gateway:
            gate = gateway_command(listen=f"127.0.0.1:{public_port}", upstream=f"127.0.0.1:{link_port}", tls=tls)
            fed.procs.append(start(gate, fed.env, fed.logs / "gateway.log"))
        keys = [make_node_keys(root / "keys", f"node-{pid}") for pid in range(num_nodes)] if node_auth else []
        if keys:
            wait_for(lambda: not nothing_listens_on(link_port), "SuperLink listening", 60, fed.procs[0],
                     fed.logs / "superlink.log")
            fed.register(*keys)
        for pid, port in enumerate(node_ports):
            data = data_paths[pid] if data_paths else None
            cmd = _node_command(f"127.0.0.1:{fed.public_port}", pid, num_nodes, port, tls, data, warm,
                                keys[pid] if keys else None, trusted)
            fed.nodes.append(start(cmd, fed.env, fed.logs / f"supernode-{pid}.log"))
        fed.procs += fed.nodes
        for pid, node in enumerate(fed.nodes):
            log = fed.logs / f"supernode-{pid}.log"
            wait_for(lambda log=log: "SuperNode ID" in log.read_text(errors="replace"), "SuperNode ID", 60, node, log)
            if warm:
                wait_for(lambda log=log: "serving ClientApp tasks" in log.read_text(errors="replace"),
                         "warm worker", 60, node, log)
        yield fed
    finally:
        for proc in reversed(fed.procs):
            stop(proc)
    assert all(group_is_gone(proc) for proc in fed.procs)
    assert nothing_listens_on(link_port)


# --- what a run leaves, to compare a deployed run with the LocalGrid's ----------------------------------


def flat(tree: dict, prefix: str = "") -> dict:
    """A nested dict as one level of dotted keys."""
    out: dict = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def metrics(run_dir: str) -> list[dict]:
    """Every line of the run's metrics.jsonl; a run that wrote none fails here, not in a comparison of two
    empty lists."""
    lines = RunDirectory(run_dir).read_metrics()
    assert lines, f"{run_dir} has no metrics.jsonl lines"
    return lines


def checkpoint(run_dir: str, last_round: int = 2) -> dict[str, torch.Tensor]:
    return checkpoint_state(run_dir, last_round)


def comparable(lines: list[dict]) -> dict:
    """metrics.jsonl flattened to numbers, clients keyed by partition: all but times and the nodes' ids."""
    out: dict = {}
    for line in lines:
        clients = {str(c["partition_id"]): {k: v for k, v in c.items() if k not in ("node", "train_seconds")}
                   for c in line.get("clients", [])}
        rest = {k: v for k, v in line.items() if k not in ("wall_time_s", "clients", "rejected")}
        out.update(flat({"rejected": len(line.get("rejected", [])), **rest, "clients": clients}, f"{line['round']}."))
    return out
