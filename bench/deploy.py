"""Benchmark, run by hand (not a test): what a round costs on a real Flower federation vs the LocalGrid.

One run of the script runs the same job three times and writes ``bench/results/deploy.md`` (also printed):

1. on the in-process LocalGrid (``ffm.runtime.run_local``: ServerApp + LocalGrid + ClientApp, one process,
   one shared model);
2. on a Flower federation on loopback with flwr's default isolation: ``flower-superlink`` and one
   ``flower-supernode`` per client as OS processes (insecure), the job submitted with ``flwr run`` (what
   ``ffm deploy`` does, see docs/deploy.md); every message starts a fresh ``flwr-clientapp`` process;
3. on the same federation with warm nodes (``ffm deploy supernode --warm``): each SuperNode runs with
   ``--isolation process`` beside ffm's long-lived worker (``python -m ffm.runtime.warm_worker``), which keeps
   the model and data loaded from one message to the next.

Per-round seconds and bytes come from each run's ``metrics.jsonl`` (``wall_time_s``: from one call of the
server's ``evaluate_fn`` to the next, so it excludes the global test evaluation; ``bytes_up`` /
``bytes_down``: the array payload each way). Client evaluation is off (``federation.fraction_evaluate=0``).
Before measuring, the script waits (``--wait-quiet`` seconds at most) until no Flower process it did not
start runs on the machine (another test suite may be running real federations), and it keeps watching for
such processes while it measures; the report says what it saw.

Launch:  .venv/bin/python bench/deploy.py          (--help lists the sizes)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import runs

RESULTS = runs.REPO / "bench" / "results" / "deploy.md"

# The runtimes, in the order they run and appear in the table; the first is the reference of the ratios.
RUNTIMES = {"local": "LocalGrid", "federation": "federation", "warm": "federation --warm"}

# ----------------------------------------------------------------------------------------------------
# Other Flower processes on the machine (not started by this benchmark)

FLOWER_EXECUTABLES = {"flower-superlink", "flower-supernode", "flower-superexec", "flwr-clientapp",
                      "flwr-serverapp", "flwr-simulation", "flwr"}


def _is_flower(argv: list[str]) -> bool:
    """A Flower process or one of ffm's: its executable (or the script Python runs) is a flwr command, or it
    is ffm's warm worker or ``ffm deploy``. A shell whose command line merely mentions these names is not."""
    names = [Path(arg).name for arg in argv[:2]]
    if any(name in FLOWER_EXECUTABLES for name in names):
        return True
    if "-m" in argv[:3]:
        module = argv[argv.index("-m") + 1] if argv.index("-m") + 1 < len(argv) else ""
        return module == "ffm.runtime.warm_worker" or (module == "ffm" and "deploy" in argv)
    return False


def foreign_flower_processes() -> dict[int, str]:
    """Flower processes on this machine that are not this process's descendants: pid -> command line."""
    parents: dict[int, int] = {}
    commands: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # ended meanwhile, or not ours to read
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        commands[int(entry.name)] = [arg for arg in argv if arg]
    me, found = os.getpid(), {}
    for pid, argv in commands.items():
        ancestor = pid
        while ancestor not in (0, 1, me):
            ancestor = parents.get(ancestor, 0)
        if ancestor != me and argv and _is_flower(argv):
            found[pid] = " ".join(argv)[:120]
    return found


def wait_until_quiet(timeout: float, poll: float = 5.0) -> tuple[float, dict[int, str]]:
    """Wait until no foreign Flower process runs (``timeout`` seconds at most); returns the seconds waited and
    what still ran at the end (empty when the machine became quiet)."""
    started = time.monotonic()
    busy = foreign_flower_processes()
    while busy and time.monotonic() - started < timeout:
        print(f"waiting: {len(busy)} other Flower processes run, e.g. {next(iter(busy.values()))}", flush=True)
        time.sleep(poll)
        busy = foreign_flower_processes()
    return time.monotonic() - started, busy


class Watcher(threading.Thread):
    """Samples the foreign Flower processes every ``interval`` seconds while the benchmark measures."""

    def __init__(self, interval: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.seen, self.stopped = interval, {}, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.seen.update(foreign_flower_processes())


# ----------------------------------------------------------------------------------------------------
# The federation


def wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{log} ended early")
        time.sleep(0.5)
    raise RuntimeError(f"{log}: no '{text}' after {timeout} s")


def node_command(superlink: str, partition_id: int, clients: int, port: int, *, warm: bool) -> list[str]:
    """A SuperNode: ``flower-supernode`` itself, or with ``warm`` ``ffm deploy supernode --warm`` (the SuperNode
    with ``--isolation process`` and ffm's warm worker, started and ended together). Insecure (no ``--certs``)."""
    from ffm.runtime import deploy

    if not warm:
        return deploy.supernode_command(superlink=superlink, partition_id=partition_id, num_partitions=clients,
                                        runtime_port=port, tls=None)
    return [sys.executable, "-m", "ffm", "deploy", "supernode", "--warm", "--superlink", superlink,
            "--partition-id", str(partition_id), "--num-partitions", str(clients), "--port", str(port)]


def run_federation(job: Any, root: Path, threads: int, timeout: float, *, warm: bool) -> dict[str, Any]:
    """Start a SuperLink and one SuperNode per client (``warm``: ``ffm deploy supernode --warm``), ``flwr run``
    the job, end every process by its group.

    Returns the seconds until every SuperNode had registered (and, warm, its worker served), the seconds of
    ``flwr run``, and the warm workers' task log lines.
    """
    from ffm.runtime import deploy

    clients = job.federation.num_clients
    link_port, *node_ports = deploy.free_ports(1 + clients)
    env = deploy.deploy_env(root / "flwr-home")
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)  # every flwr-clientapp / warm worker is a fresh torch process
    (root / "flwr-home").mkdir(parents=True)
    (root / "flwr-home" / "config.toml").write_text(deploy.flower_config(f"127.0.0.1:{link_port}", tls=None))
    (root / "job.toml").write_text(deploy.job_toml(job))
    app = deploy.write_app(root / "app")
    logs = [root / "logs" / f"supernode-{pid}.log" for pid in range(clients)]
    procs: list[subprocess.Popen] = []
    started = time.perf_counter()
    try:
        cmd = deploy.superlink_command(host="127.0.0.1", port=link_port, database=root / "link.db", tls=None)
        procs.append(deploy.start(cmd, env, root / "logs" / "superlink.log"))
        for pid, port in enumerate(node_ports):
            cmd = node_command(f"127.0.0.1:{link_port}", pid, clients, port, warm=warm)
            procs.append(deploy.start(cmd, env, logs[pid]))
        for pid in range(clients):
            wait_for_text(logs[pid], "SuperNode ID", procs[pid + 1], timeout=120)
            if warm:
                wait_for_text(logs[pid], "serving ClientApp tasks", procs[pid + 1], timeout=120)
        ready = time.perf_counter()
        run = deploy.start(deploy.flwr_run_command(app, root / "job.toml"), env, root / "logs" / "flwr-run.log")
        procs.append(run)
        if run.wait(timeout=timeout) != 0:
            raise RuntimeError(f"flwr run failed, see {root / 'logs' / 'flwr-run.log'}")
        done = time.perf_counter()
    finally:
        for proc in reversed(procs):
            deploy.stop(proc)
    tasks = [warm_tasks(log) for log in logs] if warm else []
    return {"nodes_ready_s": ready - started, "flwr_run_s": done - ready, "tasks": tasks}


TASK_LINE = re.compile(r"task \d+ \((\w*)\) (\w+) in ([\d.]+) s \(input ([\d.]+) s, ClientApp ([\d.]+) s\)")


def warm_tasks(log: Path) -> list[dict[str, Any]]:
    """One warm worker's tasks, in order, from its per-task log lines (see ffm/runtime/warm_worker.py)."""
    return [{"kind": m[1], "status": m[2], "seconds": float(m[3]), "input_s": float(m[4]), "app_s": float(m[5])}
            for m in TASK_LINE.finditer(log.read_text(errors="replace"))]


# ----------------------------------------------------------------------------------------------------
# The report


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def table(rounds: dict[str, list[dict]]) -> list[str]:
    """Seconds per round of every runtime, the ratios to the first, and the bytes (once when all agree)."""
    labels = [RUNTIMES[key] for key in rounds]
    header = ["round", *(f"{label} s" for label in labels), *(f"{label} / {labels[0]}" for label in labels[1:]),
              "bytes up (all)", "bytes down (all)"]
    rows = ["| " + " | ".join(header) + " |", "|" + " ---: |" * len(header)]
    for per_runtime in zip(*rounds.values(), strict=True):
        first = per_runtime[0]
        cells = [str(first["round"]), *(f"{r['wall_time_s']:.2f}" for r in per_runtime),
                 *(f"{r['wall_time_s'] / first['wall_time_s']:.1f}x" for r in per_runtime[1:])]
        for key in ("bytes_up", "bytes_down"):
            values = [r[key] for r in per_runtime]
            cells.append(f"{values[0]:,}" if len(set(values)) == 1 else " / ".join(f"{v:,}" for v in values))
        rows.append("| " + " | ".join(cells) + " |")
    means = [_mean([r["wall_time_s"] for r in runtime]) for runtime in rounds.values()]
    cells = ["**mean**", *(f"**{m:.2f}**" for m in means), *(f"**{m / means[0]:.1f}x**" for m in means[1:]), "", ""]
    rows.append("| " + " | ".join(cells) + " |")
    return rows


def same_everywhere(rounds: dict[str, list[dict]], key: str, tolerance: float = 0.0) -> bool:
    return all(max(r[key] for r in per) - min(r[key] for r in per) <= tolerance
               for per in zip(*rounds.values(), strict=True))


def task_lines(tasks: list[list[dict[str, Any]]]) -> list[str]:
    """The warm workers' own view: the first task of each (it builds the model and loads the data) and the rest."""
    if not any(tasks):
        return ["- warm workers: no task lines found in the SuperNode logs."]
    first = [node[0] for node in tasks if node]
    rest = [task for node in tasks for task in node[1:]]
    failed = sum(task["status"].lower() != "completed" for node in tasks for task in node)
    line = (f"- warm workers (their per-task log lines): {sum(map(len, tasks))} tasks on {len(tasks)} nodes, "
            f"{failed} not completed. First task of each worker {_mean([t['seconds'] for t in first]):.2f} s "
            f"(ClientApp {_mean([t['app_s'] for t in first]):.2f} s: builds the model, loads the data)")
    if rest:
        line += (f"; later tasks {_mean([t['seconds'] for t in rest]):.2f} s each (pulling the message "
                 f"{_mean([t['input_s'] for t in rest]):.2f} s, ClientApp {_mean([t['app_s'] for t in rest]):.2f} s)")
    return [line + "."]


def report(args: argparse.Namespace, job: Any, results: dict[str, Any], env: dict[str, Any]) -> list[str]:
    rounds = results["rounds"]
    accuracies = {key: [r["test_accuracy"] for r in per] for key, per in rounds.items()}
    same_accuracy = same_everywhere(rounds, "test_accuracy", 1e-6)
    same_bytes = same_everywhere(rounds, "bytes_up") and same_everywhere(rounds, "bytes_down")
    fed, warm = results["federation"], results["warm"]
    waited, busy, seen = env["waited_s"], env["busy"], env["seen"]
    quiet = (f"none after waiting {waited:.0f} s" if not busy else
             f"{len(busy)} still running after waiting {waited:.0f} s (measured anyway)")
    watched = "none" if not seen else f"{len(seen)} ({'; '.join(list(seen.values())[:3])})"
    accuracy_text = "; ".join(f"{RUNTIMES[key]} {', '.join(f'{a:.4f}' for a in values)}"
                              for key, values in accuracies.items())
    flower = (f"- other Flower processes (not this benchmark's) before measuring: {quiet}; seen while measuring: "
              f"{watched}")
    return [
        *runs.report_head("ffm on a Flower federation (loopback), default and warm SuperNodes, vs the in-process "
                          "LocalGrid", env["load"], env["seconds"], [flower]),
        f"Job: `{args.config}` plus `{' '.join(job_overrides(args))}`: {job.federation.num_clients} clients x "
        f"{job.federation.rounds} rounds, `train.local_steps={job.train.local_steps}`, batch {job.train.batch_size}, "
        f"max_length {job.model.max_length}, model `{job.model.name}`, method `{job.method.name}`, no client "
        f"evaluation. torch threads: {args.threads or 'default'} (federation: `OMP_NUM_THREADS` of every process).",
        "",
        "Runtimes, one after the other in this order: **LocalGrid** is `run_local` in the benchmark's process. "
        "**federation** is `flower-superlink` + one `flower-supernode` per client on 127.0.0.1 (insecure, SQLite "
        "state, flwr's default isolation: a fresh `flwr-clientapp` process per message); `flwr run` submits the "
        "job. **federation --warm** is the same with every node started as `python -m ffm deploy supernode "
        "--warm` (the SuperNode with `--isolation process` beside ffm's long-lived worker "
        "`python -m ffm.runtime.warm_worker`). 'seconds' is `wall_time_s` of `metrics.jsonl`: from one call of "
        "the server's `evaluate_fn` to the next (sampling, messages, every client's work, aggregation; the "
        "global test evaluation excluded). Bytes are the array payload of one round, all clients together.",
        "",
        *table(rounds),
        "",
        f"- LocalGrid: `run_local` took {results['local_s']:.1f} s in all (workspace, rounds, global evaluations, "
        "final save).",
        f"- federation: {fed['nodes_ready_s']:.1f} s until every SuperNode had registered, then `flwr run` "
        f"{fed['flwr_run_s']:.1f} s in all (ServerApp process start, workspace, rounds, final save).",
        f"- federation --warm: {warm['nodes_ready_s']:.1f} s until every SuperNode had registered and its worker "
        f"served (the worker imports torch, transformers and peft once), then `flwr run` {warm['flwr_run_s']:.1f} "
        "s in all.",
        *task_lines(warm["tasks"]),
        f"- same bytes every round on all three: {same_bytes}.",
        f"- same test accuracy after every round on all three: {same_accuracy} ({accuracy_text}).",
        "- Why the default federation is slower: flwr 1.42 starts a fresh `flwr-clientapp` process for every "
        "message, which imports torch, transformers and peft, loads the data and the model, trains and exits; "
        "the LocalGrid keeps one model in memory. The warm worker pays that start-up once per node; what remains "
        "over the LocalGrid is mostly waiting in flwr: the SuperNode's and the ServerApp's polling (3 s intervals) "
        "and pulling each message (the \"pulling\" seconds above); the nodes' training itself runs in parallel "
        "processes on the shared cores. See docs/deploy.md.",
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
    parser = runs.process_parser(__doc__.split("\n\n")[0], RESULTS, "job file the benchmark job starts from")
    parser.add_argument("--clients", type=int, default=3, help="clients = SuperNodes")
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds")
    parser.add_argument("--local-steps", type=int, default=2, help="train.local_steps")
    parser.add_argument("--max-examples", type=int, default=300, help="data.max_examples")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more job overrides")
    parser.add_argument("--timeout", type=float, default=580, help="seconds each `flwr run` may take")
    parser.add_argument("--wait-quiet", type=float, default=600, help="seconds to wait at most until no other "
                        "Flower process runs on the machine (0: do not wait)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    os.chdir(runs.REPO)
    waited, busy = wait_until_quiet(args.wait_quiet)
    if busy:
        print(f"still {len(busy)} other Flower processes after {waited:.0f} s; measuring anyway", flush=True)
    load, start = os.getloadavg(), time.perf_counter()
    watcher = Watcher()
    watcher.start()
    try:
        with runs.scratch_dir("ffm-bench-deploy-", keep=args.keep_runs) as scratch:
            runs.quiet_libraries()
            runs.set_threads(args.threads)
            from ffm.runtime import run_local

            overrides = job_overrides(args)
            jobs = {key: runs.make_job(args.config, overrides if key == "local" else [*overrides, "runtime=flower"],
                                       scratch / key) for key in RUNTIMES}
            tick = time.perf_counter()
            run_local(jobs["local"])
            results: dict[str, Any] = {"local_s": time.perf_counter() - tick}
            print(f"LocalGrid: {results['local_s']:.1f} s", flush=True)
            for key in ("federation", "warm"):
                results[key] = run_federation(jobs[key], scratch / f"flower-{key}", args.threads, args.timeout,
                                              warm=key == "warm")
                ready, took = results[key]["nodes_ready_s"], results[key]["flwr_run_s"]
                print(f"{RUNTIMES[key]}: ready {ready:.1f} s, flwr run {took:.1f} s", flush=True)
            results["rounds"] = {key: runs.read_rounds(scratch / key) for key in RUNTIMES}
    finally:
        watcher.stopped.set()
    watcher.join()
    env = {"waited_s": waited, "busy": busy, "seen": watcher.seen, "load": load, "seconds": time.perf_counter() - start}
    runs.publish("\n".join(report(args, jobs["local"], results, env)), args.out)


if __name__ == "__main__":
    main()
