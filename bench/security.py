"""Benchmark, run by hand (not a test): who may run what on a federation, old defaults against new.

Two federations on loopback, each a TLS SuperLink with SuperNode authentication and two SuperNodes, one for
each layout:

- **old**: flwr's layout, every API on the SuperLink's one port (``ffm deploy superlink --expose-control``),
  cold SuperNodes (a fresh ``flwr-clientapp`` per message, running the app bundle's code), no policy;
- **new**: ``ffm deploy superlink``'s layout (the SuperLink on the operator's loopback port, ffm's Fleet-only
  gateway on the public port), warm SuperNodes that trust only the operator's signing key, and an owner's
  policy on each node (``max_rounds: 3``).

Each attack is tried as a data owner would, holding ``ca.pem`` and its own node key, from the public address:

1. register a rogue node (``ffm deploy register`` of a key it made);
2. submit a run of its own (``flwr run`` of ffm's app);
3. submit an unsigned run through the operator's door (a leaked operator connection: does the node run it?);
4. the operator submits a signed run that breaks a node's policy (1,000 rounds).

For each: refused or not, and by what. Writes ``bench/results/security.md``.

Launch:  .venv/bin/python bench/security.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runs import REPO, tiny_bert

RESULTS = REPO / "bench" / "results" / "security.md"


def _wait(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def run_layout(layout: str, root: Path) -> dict[str, str]:
    """Start one federation in ``layout`` (old / new), try the four attacks, return each one's outcome."""
    from ffm.config import load_job
    from ffm.runtime import deploy
    from ffm.runtime.certs import make_node_keys, make_test_certificates
    from ffm.runtime.signing import make_signing_keys, sign_run

    new = layout == "new"
    certs = make_test_certificates(root / "certs", ("127.0.0.1", "localhost"))
    operator = make_signing_keys(root / "operator", "operator")
    (root / "trusted.yaml").write_text(f"operator: {operator.public_key.read_text().strip()}\n")
    (root / "policy.yaml").write_text("max_rounds: 3\n")
    link_port, public_port, *node_ports = deploy.free_ports(4)
    home = root / "flwr-home"
    home.mkdir(parents=True)
    env = deploy.deploy_env(home)
    logs, procs = root / "logs", []

    def flwr_cli(port: int) -> None:
        (home / "config.toml").write_text(deploy.flower_config(f"127.0.0.1:{port}", tls=certs))

    def register(key: Path, port: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ffm", "deploy", "register", str(key), "--superlink",
                               f"127.0.0.1:{port}", "--certs", str(certs.ca_cert.parent)], env=env, text=True,
                              capture_output=True, timeout=120)

    def trained(job) -> int:
        metrics = Path(job.run_dir) / "metrics.jsonl"
        lines = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        return sum(1 for line in lines if line["round"] > 0 and not line.get("failed"))

    def submit(job, name: str, signed: bool, enough: int = 2) -> tuple[int, str]:
        """Submit and wait for the end, or until ``enough`` rounds trained (the run is then stopped: it ran)."""
        app = deploy.write_app(root / f"app-{name}")
        signature = (sign_run(operator.private_key, "operator", deploy.fab_bytes(app), deploy.node_run_config(job))
                     if signed else None)
        (root / f"{name}.toml").write_text(deploy.job_toml(job, signature))
        log = logs / f"{name}.log"
        proc = deploy.start(deploy.flwr_run_command(app, root / f"{name}.toml"), env, log)
        _wait(lambda: proc.poll() is not None or trained(job) >= enough, 600)
        code = proc.poll()
        if code is None:  # still training: what the attack wanted happened
            deploy.stop(proc)
            return -1, f"still running after {trained(job)} round(s) trained: stopped"
        return code, f"exit {code}, {trained(job)} round(s) trained"

    try:
        public = public_port if new else link_port
        link = deploy.superlink_command(host="127.0.0.1", port=link_port, database=root / "link.db", tls=certs,
                                        node_auth=True)
        procs.append(deploy.start(link, env, logs / "superlink.log"))
        if new:
            gate = deploy.gateway_command(listen=f"127.0.0.1:{public_port}", upstream=f"127.0.0.1:{link_port}",
                                          tls=certs)
            procs.append(deploy.start(gate, env, logs / "gateway.log"))
        _wait(lambda: not _free(link_port) and (not new or not _free(public_port)), 60)
        keys = [make_node_keys(root / "keys", f"node-{pid}") for pid in range(2)]
        for key in keys:
            assert register(key.public_key, link_port).returncode == 0
        for pid, port in enumerate(node_ports):
            cmd = deploy.supernode_command(superlink=f"127.0.0.1:{public}", partition_id=pid, num_partitions=2,
                                           runtime_port=port, tls=certs, warm=new, auth_key=keys[pid].private_key,
                                           policy=root / "policy.yaml" if new else None)
            procs.append(deploy.start(cmd, env, logs / f"node-{pid}.log"))
            if new:
                worker = deploy.warm_worker_command(port, trusted_keys=root / "trusted.yaml")
                procs.append(deploy.start(worker, env, logs / f"worker-{pid}.log"))
        for pid in range(2):
            _wait(lambda pid=pid: "SuperNode ID" in (logs / f"node-{pid}.log").read_text(errors="replace"), 90)
        overrides = ["model.name=" + str(tiny_bert(root)), "data.max_examples=60", "data.partitioner=iid",
                     "model.max_length=32", "federation.num_clients=2", "train.local_steps=1",
                     "federation.fraction_evaluate=0", "federation.max_failed_rounds=1", "runtime=flower"]
        job = lambda name, rounds: load_job(None, [*overrides, f"federation.rounds={rounds}",  # noqa: E731
                                                   f"run_dir={root / 'runs' / name}"])
        out = {}
        rogue = make_node_keys(root / "rogue", "rogue")
        result = register(rogue.public_key, public)
        out["rogue node registration"] = ("**refused**: the gateway answers 403 (the Control API is not served "
                                          "on the public address)" if result.returncode != 0 and new else
                                          "refused" if result.returncode != 0 else "**accepted**: the SuperLink "
                                          "registered it (any holder of ca.pem can add nodes)")
        flwr_cli(public)
        code, what = submit(job("owner-run", 1), "owner-run", signed=False)
        out["run submitted by a data owner"] = (f"**refused**: the gateway answers 403 ({what})" if code != 0
                                                else f"**accepted** ({what})")
        flwr_cli(link_port)
        code, what = submit(job("unsigned", 1), "unsigned", signed=False)
        worker_log = "".join((logs / f"worker-{p}.log").read_text(errors="replace") for p in range(2)) if new else ""
        out["unsigned run reaching the nodes"] = (
            f"**refused by every node**: `the run is not signed` ({what})" if "the run is not signed" in worker_log
            else f"**ran** ({what}): a cold node runs whatever app bundle the SuperLink hands it")
        code, what = submit(job("thousand", 1000), "thousand", signed=True)
        node_logs = "".join((logs / f"node-{p}.log").read_text(errors="replace") for p in range(2))
        server = (logs / "thousand.log").read_text(errors="replace")
        out["signed run breaking a node's policy (1,000 rounds)"] = (
            f"**refused by every node**: `max_rounds` ({what})" if "max_rounds" in server + node_logs + worker_log
            else f"**ran** ({what}): no node had a policy")
        return out
    finally:
        for proc in reversed(procs):
            deploy.stop(proc)


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ffm-security-") as tmp:
        outcomes = {layout: run_layout(layout, Path(tmp) / layout) for layout in ("old", "new")}
    lines = ["# Who may run what: each attack with the old defaults and the new", "",
             f"`.venv/bin/python bench/security.py` ({time.perf_counter() - started:.0f} s). Two federations on "
             "loopback, each a TLS SuperLink with SuperNode authentication and two registered SuperNodes. "
             "**old**: every API on the SuperLink's one port, cold nodes, no policy. **new**: `ffm deploy "
             "superlink`'s layout (the SuperLink on the operator's loopback port, ffm's Fleet-only gateway on the "
             "public port), warm nodes trusting only the operator's signing key, each owner's policy "
             "`max_rounds: 3`. The attacker holds `ca.pem` and its own node key, as every data owner does.", "",
             "| attack | old defaults | new defaults |", "| --- | --- | --- |"]
    for attack in outcomes["old"]:
        lines.append(f"| {attack} | {outcomes['old'][attack]} | {outcomes['new'][attack]} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
