"""Benchmark, run by hand (not a test): the federation's footprint, memory and bytes.

Writes ``bench/results/footprint.md`` (also printed). Each case runs in its own process (this script with
``--child``), so that one case's memory does not count in another's:

1. Peak RSS (VmHWM) for ``--clients`` and ``--many-clients`` clients (LoRA): right after building the workspace
   (the baseline) and after one round.
2. Bytes per round of LoRA vs full fine-tuning (``method.name=full``) for ``--full-clients`` clients: one
   client's update (``state_nbytes`` of its ArrayRecord) and the round's ``bytes_up`` / ``bytes_down`` from
   ``metrics.jsonl``.

Launch:  .venv/bin/python bench/footprint.py          (--help lists the sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import runs

RESULTS = runs.REPO / "bench" / "results" / "footprint.md"
MIB = 1024 * 1024


# ----------------------------------------------------------------------------------------------------
# Each case in its own process


def child_main(spec: dict[str, Any]) -> None:
    """Build the workspace, note the peak RSS, run the job, note it again; print one RESULT line."""
    runs.quiet_libraries()
    runs.set_threads(spec["threads"])
    from flwr.app import ArrayRecord

    from ffm.models import state_nbytes
    from ffm.runtime import run_local
    from ffm.workspace import workspace_for

    job = runs.make_job(spec["config"], spec["overrides"], Path(spec["run_dir"]))
    workspace = workspace_for(job)
    result: dict[str, Any] = {
        "peak_rss_workspace": runs.peak_rss_bytes(),
        "update_bytes": state_nbytes(ArrayRecord(workspace.initial_state)),
        "tensor_bytes": sum(t.numel() * t.element_size() for t in workspace.initial_state.values()),
        "trainable_params": sum(t.numel() for t in workspace.initial_state.values()),
        "total_params": sum(p.numel() for p in workspace.model.parameters()),
    }
    start = time.perf_counter()
    run_local(job)
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_run"] = runs.peak_rss_bytes()
    first = runs.read_rounds(Path(job.run_dir))[0]
    result.update(bytes_up=first["bytes_up"], bytes_down=first["bytes_down"], clients=len(first["clients"]))
    print("RESULT " + json.dumps(result), flush=True)


def run_child(
    args: argparse.Namespace, scratch: Path, name: str, overrides: list[str], config: Path | None = None
) -> dict:
    """Run one case in its own process (this script with ``--child``); its RESULT figures."""
    print(f"[footprint] {name} (own process) ...", flush=True)
    spec = {"config": str(config or args.config), "overrides": overrides, "run_dir": str(scratch / name),
            "threads": args.threads}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, cwd=runs.REPO
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def process_overrides(args: argparse.Namespace) -> list[str]:
    """The small job of every case: one round, one local step, short inputs."""
    return [
        f"data.max_examples={args.rss_max_examples}",
        f"data.test_fraction={args.rss_test_fraction}",
        "data.partitioner=iid",
        "federation.rounds=1",
        "federation.fraction_train=1.0",
        "federation.fraction_evaluate=0",
        "train.local_steps=1",
        f"train.batch_size={args.rss_batch_size}",
        f"model.max_length={args.rss_max_length}",
    ]


def measure_processes(args: argparse.Namespace, scratch: Path) -> dict[str, dict]:
    base = process_overrides(args)
    cases = {}
    for clients in (args.clients, args.many_clients):
        name = f"lora-{clients}"
        cases[name] = run_child(args, scratch, name, [*base, f"federation.num_clients={clients}"])
    full = [*base, f"federation.num_clients={args.full_clients}", "method.name=full"]
    cases["full"] = run_child(args, scratch, "full", full, runs.without_method(args.config, scratch))
    return cases


# ----------------------------------------------------------------------------------------------------
# The report


def memory_section(cases: dict[str, dict], args: argparse.Namespace) -> list[str]:
    few, many = cases[f"lora-{args.clients}"], cases[f"lora-{args.many_clients}"]
    mib = lambda b: f"{b / MIB:,.0f}"  # noqa: E731
    rows = [
        f"| {n} | {mib(c['peak_rss_workspace'])} | {mib(c['peak_rss_run'])} | "
        f"+{mib(c['peak_rss_run'] - c['peak_rss_workspace'])} | {c['seconds']:.1f} |"
        for n, c in ((args.clients, few), (args.many_clients, many))
    ]
    extra = lambda c: c["peak_rss_run"] - c["peak_rss_workspace"]  # noqa: E731
    growth = extra(many) - extra(few)
    per_client = growth / (args.many_clients - args.clients)
    return [
        "## 1. Peak RSS by number of clients (one process per row, LoRA)",
        "",
        f"Job: config plus `{' '.join(process_overrides(args))} federation.num_clients=N`. Peak RSS is the "
        "process's VmHWM (not `ru_maxrss`, which Linux carries over from the parent across fork/exec): first "
        "right after building the workspace (model, tokenizer, data split: the baseline), then at the end of "
        "`run_local` (tokenized data, all messages of the round, global evaluation, checkpoint).",
        "",
        "| clients | peak RSS, workspace only (MiB) | peak RSS after 1 round (MiB) | round's extra (MiB) "
        "| run_local (s) |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"From {args.clients} to {args.many_clients} clients the round's extra memory changes by "
        f"{growth / MIB:+,.1f} MiB, {per_client / 1024:+,.1f} KiB per added client; one client's trainable state "
        f"(its LoRA update) is {few['update_bytes'] / 1024:,.1f} KiB.",
        "",
    ]


def bytes_section(cases: dict[str, dict], args: argparse.Namespace) -> list[str]:
    lora, full = cases[f"lora-{args.clients}"], cases["full"]
    n = args.clients
    per_round = lambda c: n * c["update_bytes"]  # noqa: E731
    mb = lambda b: f"{b / 1e6:,.3f}"  # noqa: E731
    mib = lambda b: f"{b / MIB:,.0f}"  # noqa: E731
    rows = [
        ("trainable parameters (travel)", f"{lora['trainable_params']:,}", f"{full['trainable_params']:,}"),
        (
            "one client's update: ArrayRecord payload, `state_nbytes` (MB)",
            mb(lora["update_bytes"]),
            mb(full["update_bytes"]),
        ),
        ("one client's update: raw tensor bytes (MB)", mb(lora["tensor_bytes"]), mb(full["tensor_bytes"])),
        ("measured in metrics.jsonl: clients in round 1", str(lora["clients"]), str(full["clients"])),
        ("measured in metrics.jsonl: `bytes_down` of round 1 (MB)", mb(lora["bytes_down"]), mb(full["bytes_down"])),
        ("measured in metrics.jsonl: `bytes_up` of round 1 (MB)", mb(lora["bytes_up"]), mb(full["bytes_up"])),
        (f"bytes down per round, {n} clients (MB)", mb(per_round(lora)), mb(per_round(full))),
        (f"bytes up per round, {n} clients (MB)", mb(per_round(lora)), mb(per_round(full))),
        ("peak RSS of the 1-round run (MiB)", mib(lora["peak_rss_run"]), mib(full["peak_rss_run"])),
        ("run_local wall time (s)", f"{lora['seconds']:.1f}", f"{full['seconds']:.1f}"),
    ]
    return [
        "## 2. Bytes per round: LoRA vs full fine-tuning",
        "",
        "Same job as section 1; `full` drops the config's method section, adds `method.name=full` and runs "
        f"{args.full_clients} clients (`--full-clients`). The {n}-client rows are {n} x one update each way "
        "(FedAvg sends every sampled client the global state and gets one update back); the measured rows check "
        "that against the runs' "
        f"`metrics.jsonl`. Total parameters: {lora['total_params']:,} (LoRA-wrapped model) / "
        f"{full['total_params']:,} (plain model).",
        "",
        "| | LoRA | full |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {a} | {b} |" for name, a, b in rows],
        f"| **bytes per round, full / LoRA** | 1 | **{full['update_bytes'] / lora['update_bytes']:,.0f}x** |",
        "",
    ]


def report(args: argparse.Namespace, cases: dict, seconds: float, load: tuple) -> str:
    title = "ffm federation footprint benchmark: memory and bytes"
    return "\n".join([*runs.report_head(title, load, seconds), *memory_section(cases, args),
                      *bytes_section(cases, args)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = runs.process_parser(__doc__.split("\n\n")[0], RESULTS, "job file every case starts from")
    parser.add_argument("--clients", type=int, default=10, help="clients of the small RSS case and the bytes rows")
    parser.add_argument("--many-clients", type=int, default=100, help="clients of the large RSS case")
    parser.add_argument("--full-clients", type=int, default=10, help="clients of the method.name=full run")
    parser.add_argument("--rss-max-examples", type=int, default=1000, help="data.max_examples of every case")
    parser.add_argument("--rss-test-fraction", type=float, default=0.05, help="data.test_fraction of every case")
    parser.add_argument("--rss-batch-size", type=int, default=4, help="train.batch_size of every case")
    parser.add_argument("--rss-max-length", type=int, default=32, help="model.max_length of every case")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    os.chdir(runs.REPO)
    load, start = os.getloadavg(), time.perf_counter()
    runs.set_threads(args.threads)  # what the report's machine lines say: the children's thread count
    with runs.scratch_dir("ffm-bench-footprint-", keep=args.keep_runs) as scratch:
        cases = measure_processes(args, scratch)
        text = report(args, cases, time.perf_counter() - start, load)
    runs.publish(text, args.out)


if __name__ == "__main__":
    main()
