"""Benchmark, run by hand (not a test): what a round costs on a real Flower federation vs the LocalGrid.

One run of the script runs the same job twice and writes ``bench/results/deploy.md`` (also printed):

1. on the in-process LocalGrid (``ffm.runtime.run_local``: ServerApp + LocalGrid + ClientApp, one process,
   one shared model);
2. on a Flower federation on loopback: ``flower-superlink`` and one ``flower-supernode`` per client as OS
   processes (insecure), the job submitted with ``flwr run`` (what ``ffm deploy`` does, see docs/deploy.md).

Per-round seconds and bytes come from each run's ``metrics.jsonl`` (``wall_time_s``: from one call of the
server's ``evaluate_fn`` to the next, so it excludes the global test evaluation; ``bytes_up`` /
``bytes_down``: the array payload each way). Client evaluation is off (``federation.fraction_evaluate=0``):
on the federation every message starts a fresh ``flwr-clientapp`` process.

Launch:  .venv/bin/python bench/deploy.py          (--help lists the sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import machine_lines, make_job, quiet_libraries, set_threads

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "deploy.md"


def wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{log} ended early")
        time.sleep(0.5)
    raise RuntimeError(f"{log}: no '{text}' after {timeout} s")


def run_federation(job: Any, root: Path, threads: int, timeout: float) -> dict[str, float]:
    """Start a SuperLink and one SuperNode per client, ``flwr run`` the job, end every process by its group.

    Returns the seconds until every SuperNode had registered and the seconds of ``flwr run``.
    """
    from ffm.runtime import deploy

    clients = job.federation.num_clients
    link_port, *node_ports = deploy.free_ports(1 + clients)
    env = deploy.deploy_env(root / "flwr-home")
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)  # every flwr-clientapp is a fresh torch process
    (root / "flwr-home").mkdir(parents=True)
    (root / "flwr-home" / "config.toml").write_text(deploy.flower_config(f"127.0.0.1:{link_port}", tls=None))
    (root / "job.toml").write_text(deploy.job_toml(job))
    app = deploy.write_app(root / "app")
    procs: list[subprocess.Popen] = []
    started = time.perf_counter()
    try:
        cmd = deploy.superlink_command(host="127.0.0.1", port=link_port, database=root / "link.db", tls=None)
        procs.append(deploy.start(cmd, env, root / "logs" / "superlink.log"))
        for pid, port in enumerate(node_ports):
            cmd = deploy.supernode_command(superlink=f"127.0.0.1:{link_port}", partition_id=pid,
                                           num_partitions=clients, runtime_port=port, tls=None)
            procs.append(deploy.start(cmd, env, root / "logs" / f"supernode-{pid}.log"))
        for pid in range(clients):
            wait_for_text(root / "logs" / f"supernode-{pid}.log", "SuperNode ID", procs[pid + 1], timeout=120)
        ready = time.perf_counter()
        run = deploy.start(deploy.flwr_run_command(app, root / "job.toml"), env, root / "logs" / "flwr-run.log")
        procs.append(run)
        if run.wait(timeout=timeout) != 0:
            raise RuntimeError(f"flwr run failed, see {root / 'logs' / 'flwr-run.log'}")
        done = time.perf_counter()
    finally:
        for proc in reversed(procs):
            deploy.stop(proc)
    return {"nodes_ready_s": ready - started, "flwr_run_s": done - ready}


def read_rounds(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["round"] > 0]


def table(local: list[dict], fed: list[dict]) -> list[str]:
    rows = [
        "| round | LocalGrid s | federation s | federation / LocalGrid | bytes up (both) | bytes down (both) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a, b in zip(local, fed, strict=True):
        same = a["bytes_up"] == b["bytes_up"] and a["bytes_down"] == b["bytes_down"]
        up, down = f"{a['bytes_up']:,}", f"{a['bytes_down']:,}"
        if not same:
            up, down = f"{up} / {b['bytes_up']:,}", f"{down} / {b['bytes_down']:,}"
        ratio = b["wall_time_s"] / a["wall_time_s"]
        seconds = f"{a['wall_time_s']:.2f} | {b['wall_time_s']:.2f} | {ratio:.1f}x"
        rows.append(f"| {a['round']} | {seconds} | {up} | {down} |")
    mean_a = sum(r["wall_time_s"] for r in local) / len(local)
    mean_b = sum(r["wall_time_s"] for r in fed) / len(fed)
    rows.append(f"| **mean** | **{mean_a:.2f}** | **{mean_b:.2f}** | **{mean_b / mean_a:.1f}x** | | |")
    return rows


def report(args: argparse.Namespace, job: Any, runs: dict[str, Any], load: tuple, seconds: float) -> list[str]:
    local, fed = runs["local_rounds"], runs["fed_rounds"]
    accuracy = [(a["test_accuracy"], b["test_accuracy"]) for a, b in zip(local, fed, strict=True)]
    same = all(abs(a - b) < 1e-6 for a, b in accuracy)
    return [
        "# ffm on a Flower federation (loopback) vs the in-process LocalGrid",
        "",
        *machine_lines(),
        f"- load average (1 min) at start / end: {load[0]:.2f} / {os.getloadavg()[0]:.2f} (other work shares "
        "the cores)",
        f"- command: `{' '.join(['python', *sys.argv])}`; whole benchmark {seconds:.0f} s",
        "",
        f"Job: `{args.config}` plus `{' '.join(job_overrides(args))}`: {job.federation.num_clients} clients x "
        f"{job.federation.rounds} rounds, `train.local_steps={job.train.local_steps}`, batch {job.train.batch_size}, "
        f"max_length {job.model.max_length}, model `{job.model.name}`, method `{job.method.name}`, no client "
        f"evaluation. torch threads: {args.threads or 'default'} (federation: `OMP_NUM_THREADS` of every process).",
        "",
        "Federation: `flower-superlink` + one `flower-supernode` per client on 127.0.0.1, insecure, SQLite "
        "state; `flwr run` submits the job. 'seconds' is `wall_time_s` of `metrics.jsonl`: from one call of "
        "the server's `evaluate_fn` to the next (sampling, messages, every client's work, aggregation; the "
        "global test evaluation excluded). Bytes are the array payload of one round, all clients together.",
        "",
        *table(local, fed),
        "",
        f"- LocalGrid: `run_local` took {runs['local_s']:.1f} s in all (workspace, rounds, global evaluations, "
        "final save).",
        f"- federation: {runs['fed']['nodes_ready_s']:.1f} s until every SuperNode had registered, then "
        f"`flwr run` {runs['fed']['flwr_run_s']:.1f} s in all (ServerApp process start, workspace, rounds, "
        "final save).",
        f"- same test accuracy after every round on both: {same} ({', '.join(f'{b:.4f}' for _, b in accuracy)}).",
        "- Why the federation is slower: flwr 1.42 starts a fresh `flwr-clientapp` process for every message, "
        "which imports torch, transformers and peft, loads the data and the model, trains and exits; the "
        "LocalGrid keeps one model in memory. See docs/deploy.md.",
    ]


def job_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"federation.num_clients={args.clients}",
        f"federation.rounds={args.rounds}",
        "federation.fraction_evaluate=0",
        f"train.local_steps={args.local_steps}",
        f"data.max_examples={args.max_examples}",
        "data.partitioner=iid",
        *args.set,
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="job file the benchmark job starts from")
    parser.add_argument("--clients", type=int, default=3, help="clients = SuperNodes")
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds")
    parser.add_argument("--local-steps", type=int, default=2, help="train.local_steps")
    parser.add_argument("--max-examples", type=int, default=300, help="data.max_examples")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more job overrides")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process (0 = default)")
    parser.add_argument("--timeout", type=float, default=580, help="seconds `flwr run` may take")
    parser.add_argument("--output", default=str(RESULTS), help="where the Markdown table goes")
    parser.add_argument("--keep-runs", action="store_true", help="keep the scratch run directories and logs")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    load, start = os.getloadavg(), time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="ffm-bench-deploy-"))
    try:
        quiet_libraries()
        set_threads(args.threads)
        from ffm.runtime import run_local

        local_job = make_job(args.config, job_overrides(args), scratch / "local")
        fed_job = make_job(args.config, [*job_overrides(args), "runtime=flower"], scratch / "federation")
        tick = time.perf_counter()
        run_local(local_job)
        local_s = time.perf_counter() - tick
        print(f"LocalGrid: {local_s:.1f} s", flush=True)
        fed = run_federation(fed_job, scratch / "flower", args.threads, args.timeout)
        print(f"federation: {fed}", flush=True)
        runs = {"local_s": local_s, "fed": fed, "local_rounds": read_rounds(scratch / "local"),
                "fed_rounds": read_rounds(scratch / "federation")}
        text = "\n".join(report(args, local_job, runs, load, time.perf_counter() - start))
    finally:
        if args.keep_runs:
            print(f"runs and logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n")
    print(text)
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
