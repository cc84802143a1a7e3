"""Benchmark, run by hand (not a test): ffm's LocalGrid vs Flower's own Simulation Engine (Ray), same job.

The job: configs/demo.yaml (MiniLM + LoRA r=8, BBC News) with 50 IID clients, 2 rounds x 2 local steps,
evaluation by the server only. It runs six ways, one after the other, in one invocation:

1. ``ffm run`` on the LocalGrid with 1 worker (torch on every core);
2. ``ffm run`` on the LocalGrid with one worker per core (``federation.workers``, one torch thread each);
   each of these two also with ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc's allocator trading time for memory);
3. the same ServerApp and ClientApp on Flower's Simulation Engine, as a new user would run it: a
   ``flower-superlink --simulation`` and ``flwr run APP CONNECTION --stream`` with
   ``--federation-config num-supernodes=50`` and flwr's default resources (2 CPUs per ClientApp);
4. the same with one CPU per ClientApp (``client-resources-num-cpus=1``: one Ray actor per core).

Each way is measured from outside: wall time from launch to exit, and the peak PSS of the whole process
tree sampled every 0.2 s (bench/memory.py; for Ray that tree holds the SuperLink, flwr-simulation, Ray's
GCS, raylet and its worker processes, all descendants of the launcher). The final accuracy and the bytes
each way come from each run's summary.json: they must agree, or the comparison is void.

Flower's Simulation Engine needs Ray, which ffm does not install: ``make bench-peer`` installs
``flwr[simulation]`` into the venv and runs this script. The test suite never needs it.

Launch:  make bench-peer      (or .venv/bin/python bench/peer.py [--clients 50] [--work runs/bench-peer])
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from runs import DEMO, REPO, measured

RESULTS = REPO / "bench" / "results" / "peer.md"
# glibc's allocator without its dynamic mmap threshold: tensors above 128 KiB get their own mappings, returned
# on free, instead of a heap that fragments (measured: less memory, more page faults)
LEAN = "MALLOC_MMAP_THRESHOLD_=131072"


def job_overrides(clients: int) -> list[str]:
    return [f"federation.num_clients={clients}", "federation.rounds=2", "train.local_steps=2",
            "federation.fraction_evaluate=0", "data.partitioner=iid"]


def _wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the simulation SuperLink did not open port {port} within {timeout:.0f} s")


def ray_job(run_dir: Path, clients: int, cpus: str) -> int:
    """Run the job on Flower's Simulation Engine: a simulation SuperLink of our own (a child of this process,
    so that the measured tree holds it and Ray) and ``flwr run --stream``; stop the SuperLink after."""
    sys.path.insert(0, str(REPO))
    from ffm.config import load_job
    from ffm.runtime import deploy

    root = run_dir.parent / f"{run_dir.name}.flower"
    root.mkdir(parents=True, exist_ok=True)
    job = load_job(DEMO, [*job_overrides(clients), f"run_dir={run_dir}", "progress=false"])
    (root / "job.toml").write_text(deploy.job_toml(job))
    app = deploy.write_app(root / "app")
    (root / "home").mkdir(exist_ok=True)
    env = deploy.deploy_env(root / "home")
    (port,) = deploy.free_ports(1)
    (root / "home" / "config.toml").write_text(deploy.flower_config(f"127.0.0.1:{port}", tls=None))
    link = deploy.start([*deploy.superlink_command(host="127.0.0.1", port=port, database=None, tls=None),
                         "--simulation"], env, root / "superlink.log")
    federation = f"num-supernodes={clients}" + ("" if cpus == "default" else f" client-resources-num-cpus={cpus}")
    try:
        _wait_for_port(port)
        started = time.perf_counter()
        with open(root / "flwr-run.log", "w") as out:
            code = subprocess.call([*deploy.flwr_run_command(app, root / "job.toml"), "--federation-config",
                                    federation], env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT)
        (root / "flwr-run-seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    finally:
        deploy.stop(link)
    return code


def row(label: str, r: dict, ray: dict) -> str:
    """A table row; the ratios are Ray-on-every-core's figure over this way's (> 1: this way needs less)."""
    s = r.get("summary")
    if s is None:
        return f"| {label} | failed (exit {r['exit']}) | | | | | | |"
    return (f"| {label} | {r['seconds']} | {ray['seconds'] / r['seconds']:.2f}x | {r['peak_pss_mib']} | "
            f"{ray['peak_pss_mib'] / r['peak_pss_mib']:.2f}x | {r['processes']} | {s['final_test_accuracy']:.4f} | "
            f"{(s['bytes_up'] + s['bytes_down']) / 1e6:.2f} |")


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in runs.items() if "summary" in r]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
    colors = ["tab:blue" if n.startswith("ffm") else "tab:orange" for n in names]
    for ax, key, label in ((axes[0], "seconds", "wall time (s)"),
                           (axes[1], "peak_pss_mib", "peak PSS of the tree (MiB)")):
        bars = ax.barh(names, [runs[n][key] for n in names], color=colors)
        ax.bar_label(bars, fmt="%.0f", padding=2)
        ax.set(xlabel=label, xlim=(0, 1.15 * max(runs[n][key] for n in names)))
    axes[0].invert_yaxis()
    fig.suptitle("same job (MiniLM + LoRA, 50 clients, 2 rounds x 2 steps): ffm LocalGrid vs Flower + Ray")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-peer")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--ray-job", type=Path, help=argparse.SUPPRESS)  # internal: run one Ray way into this dir
    parser.add_argument("--cpus", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_job:
        sys.exit(ray_job(args.ray_job, args.clients, args.cpus))
    try:
        import ray
    except ImportError:
        sys.exit("bench/peer.py needs Flower's Simulation Engine (Ray): run `make bench-peer`, which installs "
                 "flwr[simulation] into .venv")
    args.work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    job = job_overrides(args.clients)
    runs: dict[str, dict] = {}
    lean = dict([LEAN.split("=")])
    for workers in sorted({1, cores}):
        label, name, overrides = f"ffm, {workers} worker{'s' * (workers > 1)}", f"ffm-workers-{workers}", [
            *job, f"federation.workers={workers}"]
        runs[label] = measured(args.work, name, overrides)
        runs[f"{label}, {LEAN}"] = measured(args.work, f"{name}-lean", overrides, env=lean)
    for label, cpus in (("Flower + Ray, default resources (2 CPUs per ClientApp)", "default"),
                        ("Flower + Ray, 1 CPU per ClientApp", "1")):
        name = f"ray-cpus-{cpus}"
        command = [sys.executable, str(Path(__file__).resolve()), "--ray-job", str(args.work / name),
                   "--clients", str(args.clients), "--cpus", cpus]
        runs[label] = measured(args.work, name, [], command=command)
    accuracies = {round(r["summary"]["final_test_accuracy"], 6) for r in runs.values() if "summary" in r}
    traffic = {r["summary"]["bytes_up"] + r["summary"]["bytes_down"] for r in runs.values() if "summary" in r}
    reference = runs["Flower + Ray, 1 CPU per ClientApp"]
    lines = [
        "# ffm's LocalGrid vs Flower's Simulation Engine (Ray)", "",
        f"Measured by `bench/peer.py` ({time.strftime('%Y-%m-%d')}), the six ways one after the other on this "
        f"machine ({cores} cores; flwr 1.42.0, ray {ray.__version__}). The job: configs/demo.yaml, MiniLM + LoRA "
        f"r=8 on BBC News, {args.clients} IID clients, 2 rounds x 2 local steps, evaluation by the server only. "
        "Wall time from launch to exit; peak PSS of the whole process tree (shared pages counted once; Ray's "
        "GCS, raylet and workers included). The ratios are Flower + Ray with one CPU per ClientApp (Ray on every "
        "core) over each row: above 1, the row needs less.", "",
        "| runtime | wall s | Ray's time / this | peak PSS MiB | Ray's memory / this | "
        "processes in the tree | final test accuracy | MB sent (up + down) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(row(label, r, reference) for label, r in runs.items()), "",
        f"Same final accuracy on every way: {'yes' if len(accuracies) == 1 else f'NO ({sorted(accuracies)})'}; "
        f"same bytes: {'yes' if len(traffic) == 1 else f'NO ({sorted(traffic)})'}.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    plot(runs, args.out.with_suffix(".png"))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
