"""Benchmark, run by hand (not a test): a real Flower federation that survives its faults.

A 5-round federation on loopback (``ffm deploy superlink`` with a ``--database``, four ``ffm deploy supernode
--warm`` nodes keeping their state beside them), running two jobs on a small random BERT (MiniLM's tokenizer) with LoRA
and a personal classifier head per node: **scaffold** (SCAFFOLD's control variates live on the nodes) and **dp-sgd**
(FedAvg with sample-level DP-SGD: each node counts its own steps). Each job runs once uninterrupted and once
per fault, the fault struck about a second into round 3:

- **serverapp**: the ServerApp process is killed (-9); ``ffm deploy run --resume RUN_DIR`` continues the run;
- **superlink**: the SuperLink is killed (-9) and started again on its database; the run is resumed if its
  ServerApp did not outlive it;
- **node-kill**: one SuperNode (and its worker) is killed (-9) and started again at once;
- **node-pause**: another SuperNode is paused (SIGSTOP) for longer than ``federation.round_timeout``, then
  continued (SIGCONT).

Per run the table reports whether it completed, the rounds lost (re-run after a resume) and the replies lost,
the final global state and every node's final state against the uninterrupted run (bit-identical, or the first
round that differs and why), each node's epsilon against a count by hand (every train task the node's worker
completed, from its own log: each released an update), and the wall time. Finished runs are cached under
runs/bench-faults/ (a rerun does only what is new). Writes ``bench/results/faults.md``.

Launch:  .venv/bin/python bench/faults.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from runs import REPO, tiny_bert

RESULTS = REPO / "bench" / "results" / "faults.md"
WORK = REPO / "runs" / "bench-faults"
NODES, ROUNDS, TIMEOUT_S, FAULT_ROUND = 4, 5, 30, 3
JOB = {"model": {"name": "TINY", "max_length": 32}, "task": {"name": "text_classification"},
       "data": {"source": "bbc_news", "max_examples": 400, "partitioner": "iid"},
       "method": {"name": "lora", "personal": ["classifier"]},
       "train": {"local_steps": 2, "batch_size": 8, "eval_batch_size": 64},
       "federation": {"num_clients": NODES, "rounds": ROUNDS, "fraction_evaluate": 0.0, "round_timeout": TIMEOUT_S,
                      "max_failed_rounds": 3},
       "progress": False}
JOBS = {"scaffold": {"strategy": {"name": "scaffold"}, "train": {"optimizer": "sgd", "lr": 0.05}},
        "dp-sgd": {"privacy": {"dp_sgd": True}, "train": {"lr": 0.005}}}
FAULTS = ("none", "serverapp", "superlink", "node-kill", "node-pause")
KILLED, PAUSED = 1, 2  # the partitions the node faults strike


def _merge(base: dict, extra: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def _job(name: str) -> dict:
    job = _merge(JOB, JOBS[name])
    job["model"]["name"] = str(tiny_bert(WORK))
    return job


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.3)


def _lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


class Federation:
    """`ffm deploy superlink` and NODES `ffm deploy supernode --warm`, as the guide starts them."""

    def __init__(self, root: Path) -> None:
        from ffm.runtime import deploy

        self.deploy, self.root = deploy, root
        self.home = root / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = deploy.deploy_env(self.home)
        self.logs = root / "logs"
        self.public, self.control, *self.ports = deploy.free_ports(2 + NODES)
        self.link: subprocess.Popen | None = None
        self.nodes: dict[int, subprocess.Popen] = {}
        self.starts: dict[int, int] = {}

    def _ffm(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ffm", "deploy", *args]

    def start_link(self) -> None:
        self.link = self.deploy.start(self._ffm("superlink", "--host", "127.0.0.1", "--port", str(self.public),
                                                "--control-port", str(self.control), "--database",
                                                str(self.root / "superlink.db")), self.env, self.logs / "superlink.log")
        _wait(lambda: not _free(self.public) and not _free(self.control), 60, "the SuperLink")

    def start_node(self, pid: int) -> None:
        self.starts[pid] = self.starts.get(pid, 0) + 1
        log = self.logs / f"node-{pid}-{self.starts[pid]}.log"
        self.nodes[pid] = self.deploy.start(self._ffm(
            "supernode", "--warm", "--superlink", f"127.0.0.1:{self.public}", "--partition-id", str(pid),
            "--num-partitions", str(NODES), "--port", str(self.ports[pid])), self.env, log)
        _wait(lambda: "serving ClientApp tasks" in log.read_text(errors="replace"), 120, f"node {pid}")

    def node_logs(self, pid: int) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(f"node-{pid}-*.log")))

    def superlink_pid(self) -> int:
        return next(p for p in self.deploy.descendants(self.link.pid) if "flower-superlink" in _cmdline(p))

    def serverapp_pids(self) -> list[int]:
        return [p for p in self.deploy.descendants(self.link.pid) if "flwr-serverapp" in _cmdline(p)]

    def submit(self, *args: str, log: str) -> subprocess.Popen:
        return self.deploy.start(self._ffm("run", *args, "--superlink", f"127.0.0.1:{self.control}"), self.env,
                                 self.logs / log)

    def stop(self) -> None:
        for proc in [*self.nodes.values(), self.link]:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)  # a paused node must be able to end
            if proc is not None:
                self.deploy.stop(proc)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def run_case(job_name: str, fault: str) -> dict:
    """One run of ``job_name`` with ``fault`` struck in round FAULT_ROUND; what it ended with."""
    root = WORK / f"{job_name}-{fault}"
    record = root / "record.json"
    if record.is_file():
        return json.loads(record.read_text())
    if root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    run_dir = root / "run"
    config = root / "job.yaml"
    config.write_text(yaml.safe_dump(_job(job_name) | {"run_dir": str(run_dir)}))
    fed = Federation(root)
    started = time.monotonic()
    resumes, in_flight = 0, None
    try:
        fed.start_link()
        for pid in range(NODES):
            fed.start_node(pid)
        submit = fed.submit(str(config), log="run-1.log")
        _wait(lambda: _lines(run_dir) or submit.poll() is not None, 600, "round 0")
        if not _lines(run_dir):
            raise RuntimeError(f"the run did not start: {(fed.logs / 'run-1.log').read_text()[-1500:]}")
        if fault != "none":
            _wait(lambda: any(x["round"] == FAULT_ROUND - 1 for x in _lines(run_dir)) or submit.poll() is not None,
                  900, "round 2")
            time.sleep(1.0)
            in_flight = max(x["round"] for x in _lines(run_dir)) + 1
        apps = fed.serverapp_pids()  # found now: once the SuperLink dies they are no longer below it
        if fault == "serverapp":
            for pid in apps:
                os.kill(pid, signal.SIGKILL)
        elif fault == "superlink":
            os.kill(fed.superlink_pid(), signal.SIGKILL)
            fed.link.wait(timeout=60)  # `ffm deploy superlink` ends its gateway with it
            fed.start_link()
        elif fault == "node-kill":
            os.killpg(fed.nodes[KILLED].pid, signal.SIGKILL)
            fed.nodes[KILLED].wait(timeout=30)
            fed.start_node(KILLED)
        elif fault == "node-pause":
            os.killpg(fed.nodes[PAUSED].pid, signal.SIGSTOP)
            time.sleep(TIMEOUT_S + 10)
            os.killpg(fed.nodes[PAUSED].pid, signal.SIGCONT)
        summary = run_dir / "summary.json"
        _wait(lambda: summary.is_file() or submit.poll() is not None, 1200, "the run's end")
        if not summary.is_file() and fault in ("serverapp", "superlink"):
            fed.deploy.stop(submit)  # `flwr run` may still stream the logs of a run whose ServerApp is gone
            for pid in {*apps, *fed.serverapp_pids()}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            resumes += 1
            submit = fed.submit("--resume", str(run_dir), log="run-2.log")
            _wait(lambda: summary.is_file() or submit.poll() is not None, 1200, "the resumed run's end")
        _wait(lambda: submit.poll() is not None, 120, "flwr run's exit")
        seconds = time.monotonic() - started
        hand = {str(pid): len(re.findall(r"task \d+ \(train\) completed", fed.node_logs(pid))) for pid in range(NODES)}
        # the resumed ServerApp's strategy runs the rounds left: ROUNDS - n were complete
        second = fed.logs / "run-2.log"
        left = re.findall(r"Number of rounds: (\d+)", second.read_text(errors="replace")) if second.is_file() else []
        resumed_after = [ROUNDS - int(n) for n in left[:1]]
    finally:
        fed.stop()
    out = {"job": job_name, "fault": fault, "completed": summary.is_file(), "wall_s": round(seconds, 1),
           "resumes": resumes, "in_flight": in_flight, "resumed_after": resumed_after, "hand_trains": hand,
           "lines": _lines(run_dir), "summary": json.loads(summary.read_text()) if summary.is_file() else None}
    record.write_text(json.dumps(out))
    return out


def _states(job_name: str, fault: str) -> tuple[dict, dict]:
    """(global checkpoints by round, each node's newest saved state but its privacy count) of one run."""
    import torch

    from ffm.node_state import LEDGER_KEYS

    root = WORK / f"{job_name}-{fault}"
    checkpoints = {int(p.stem.split("-")[1]): torch.load(p, weights_only=True)["state"]
                   for p in sorted((root / "run" / "checkpoints").glob("round-*.pt"))}
    nodes = {}
    for pid in range(NODES):
        files = list((root / "flwr-home" / "ffm-node-state" / f"partition-{pid}").glob("run-*.pt"))
        if files:
            saved = torch.load(files[0], weights_only=True)
            # without the ledgers (DP-SGD's count): a replayed round is rightly counted twice, see _epsilons
            nodes[pid] = {k: v for k, v in saved["snapshots"][max(saved["snapshots"])].items() if k not in LEDGER_KEYS}
    return checkpoints, nodes


def _equal(a: dict, b: dict) -> bool:
    import torch

    if a.keys() != b.keys():
        return False
    return all(_equal(a[k], b[k]) if isinstance(a[k], dict) else
               torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def compare(job_name: str, fault: str) -> str:
    """The run's final global state and nodes' states against the uninterrupted run's."""
    ref_global, ref_nodes = _states(job_name, "none")
    got_global, got_nodes = _states(job_name, fault)
    differ = [r for r in sorted(ref_global) if r in got_global and not _equal(ref_global[r], got_global[r])]
    nodes = [pid for pid in ref_nodes if pid not in got_nodes or not _equal(ref_nodes[pid], got_nodes[pid])]
    if not differ and not nodes and ROUNDS in got_global:
        return "bit-identical (global state every round, every node's kept state)"
    first = f"global state differs from round {differ[0]}" if differ else "global state bit-identical"
    return first + (f"; node state differs on partition(s) {', '.join(map(str, nodes))}" if nodes else "")


def _epsilons(record: dict) -> str:
    """Each node's reported epsilon against the one its completed train tasks give, counted by hand."""
    summary = record["summary"]
    if summary is None or not summary.get("dp_sgd"):
        return "-"
    from ffm.config import job_from_dict
    from ffm.privacy.dp_sgd import dp_sgd_epsilon
    from ffm.workspace import workspace_for

    job = job_from_dict(_job(record["job"]) | {"run_dir": str(WORK / "scratch")})
    workspace = workspace_for(job)
    cells = []
    for pid in range(NODES):
        rate = min(1.0, job.train.batch_size / len(workspace.examples("train", pid)))
        steps = record["hand_trains"][str(pid)] * job.train.local_steps
        by_hand = dp_sgd_epsilon(steps, rate, job.privacy.sgd_noise_multiplier, job.privacy.delta)
        reported = summary["dp_sgd"]["epsilon_per_party"].get(str(pid), 0.0)
        flag = "" if reported >= by_hand - 1e-9 else " **UNDER**"
        cells.append(f"{pid}: {reported:.2f} / {by_hand:.2f} ({steps} steps){flag}")
    return "; ".join(cells)


def _why(record: dict) -> str:
    lost = [(x["round"], len(x.get("rejected", []))) for x in record["lines"] if x.get("rejected")]
    parts = []
    if record["resumed_after"]:
        parts.append(f"resumed after round {record['resumed_after'][0]} (round {record['in_flight']} in flight)")
    if lost:
        parts.append("replies lost in round(s) " + ", ".join(f"{r} ({n})" for r, n in lost))
    return "; ".join(parts) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default=",".join(JOBS))
    parser.add_argument("--faults", default=",".join(FAULTS))
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    WORK.mkdir(parents=True, exist_ok=True)
    rows = ["| job | fault | completed | rounds lost | what was lost | final state vs uninterrupted | "
            "epsilon per node: reported / by hand | wall s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for job_name in args.jobs.split(","):
        for fault in ("none", *[f for f in args.faults.split(",") if f != "none"]):
            started = time.perf_counter()
            record = run_case(job_name, fault)
            print(f"  {job_name}/{fault}: completed={record['completed']} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
            lost = (record["in_flight"] - record["resumed_after"][0]) if record["resumed_after"] else 0
            state = "(reference)" if fault == "none" else compare(job_name, fault) if record["completed"] else "-"
            rows.append(f"| {job_name} | {fault} | {'yes' if record['completed'] else '**no**'} | {lost} | "
                        f"{_why(record)} | {state} | {_epsilons(record)} | {record['wall_s']:.0f} |")
    text = "\n".join([
        "# Faults on a real federation: what survives what", "",
        f"`.venv/bin/python bench/faults.py`. {NODES} warm SuperNodes and a SuperLink with a database on "
        f"loopback (`ffm deploy superlink` / `ffm deploy supernode --warm`), {ROUNDS} rounds, "
        f"`federation.round_timeout={TIMEOUT_S}`, a 2-layer random BERT + LoRA with a personal classifier head "
        f"per node, 2 local steps (the faults, not the model, matter). Each fault strikes about 1 s into round "
        f"{FAULT_ROUND}; the node faults strike partition {KILLED} "
        f"(kill -9, restarted at once) and partition {PAUSED} (SIGSTOP for {TIMEOUT_S + 10} s). \"By hand\": "
        "the epsilon of every train task the node's worker logged as completed (each sent an update).", "",
        *rows, ""])
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
