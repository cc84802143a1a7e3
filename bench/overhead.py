"""Benchmark, run by hand (not a test): what the federation costs on top of the training it carries.

One run measures three things and writes ``bench/results/overhead.md`` (also printed):

1. Overhead ratio. The same job is run as simulated federated rounds (ServerApp + LocalGrid + ClientApp,
   i.e. ``ffm.runtime.run_local``) and as a plain PyTorch loop doing the very same local steps: the same
   shared model object, each client's steps from the same round-start state, the same batches and seeds
   (``round_seed`` and ``step_batches``, as ``ffm.client`` uses them; the losses must match exactly).
   Only round time counts on the federated side: the server's ``evaluate_fn`` (global test evaluation,
   metrics line, checkpoint) is timed apart and left out, and so is the one-time setup (the workspace is
   built and every client's data tokenized before any clock starts). Bare and federated runs alternate;
   the minimum of each is kept. A second ratio divides each federated run by the ``train_steps`` time
   inside it, which machine noise cannot skew.
2. Peak RSS (VmHWM) for 10 and 100 clients, each in its own process: right after building the workspace
   (the baseline) and after one round.
3. Bytes per round of LoRA vs full fine-tuning (method.name=full) for 10 clients.

Launch:  .venv/bin/python bench/overhead.py          (or `make bench`; --help lists the sizes)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "overhead.md"
MIB = 1024 * 1024


# ----------------------------------------------------------------------------------------------------
# Setup shared by the parent and the child processes


def quiet_libraries() -> None:
    """What ``ffm run`` means to do without --verbose: Flower logs warnings only, no progress bars.

    flwr is imported first: importing it sets its logger to DEBUG, which would undo an earlier setLevel.
    """
    import logging

    import datasets
    import flwr.serverapp  # noqa: F401 - for its import-time logger setup, see above
    import transformers

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads (0 leaves torch's default: one per core)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def make_job(config: str, overrides: list[str], run_dir: Path) -> Any:
    from ffm.config import load_job

    return load_job(config, [*overrides, f"run_dir={run_dir}", "progress=false"])


def peak_rss_bytes() -> int:
    """Peak RSS of this address space (VmHWM).

    Not ``ru_maxrss``: Linux carries the parent's high-water mark across fork/exec into it, so a child of
    a big parent would report at least the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------------------------------
# 1. Overhead: federated rounds vs the bare steps


@dataclass
class FedTiming:
    total: float  # run_local, end to end
    rounds: float  # sum over rounds of [end of evaluate_fn(r-1), start of evaluate_fn(r)]
    server_eval: float  # evaluate_fn: global test evaluation + metrics line + checkpoint (round 0 included)
    client_app: float  # LocalGrid.client_seconds: every ClientApp call, whole
    train_steps: float  # inside ffm.tasks.train_steps, as called by the ClientApp
    run_dir: Path


class Clocks:
    """Time ``Reporter.__call__`` (the server's evaluate_fn) and the ClientApp's ``train_steps`` in place."""

    def __init__(self) -> None:
        import ffm.client
        import ffm.server

        self.evals: list[tuple[float, float]] = []
        self.train = 0.0
        report, train_steps = ffm.server.RoundEnd.__call__, ffm.client.train_steps

        def timed_report(round_end: Any, server_round: int, arrays: Any) -> Any:
            enter = time.perf_counter()
            try:
                return report(round_end, server_round, arrays)
            finally:
                self.evals.append((enter, time.perf_counter()))

        def timed_train_steps(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return train_steps(*args, **kwargs)
            finally:
                self.train += time.perf_counter() - start

        ffm.server.RoundEnd.__call__ = timed_report
        ffm.client.train_steps = timed_train_steps

    def reset(self) -> None:
        self.evals, self.train = [], 0.0


def run_federated(job: Any, clocks: Clocks) -> FedTiming:
    from ffm.runtime import run_local

    clocks.reset()
    start = time.perf_counter()
    _, grid = run_local(job)
    total = time.perf_counter() - start
    evals = clocks.evals
    rounds = sum(nxt[0] - prev[1] for prev, nxt in itertools.pairwise(evals))
    server_eval = sum(end - enter for enter, end in evals)
    return FedTiming(total, rounds, server_eval, grid.client_seconds, clocks.train, Path(job.run_dir))


def read_rounds(run_dir: Path) -> list[dict]:
    """metrics.jsonl lines of the trained rounds (round 0 is the initial model)."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [line for line in lines if line["round"] > 0]


def round_start_states(workspace: Any, run_dir: Path, rounds: int) -> dict[int, dict]:
    """The global state each round starts from: the initial state, then each round's checkpoint."""
    import torch

    states = {1: workspace.initial_state}
    for rnd in range(2, rounds + 1):
        path = run_dir / "checkpoints" / f"round-{rnd - 1:06d}.pt"
        states[rnd] = torch.load(path, map_location="cpu", weights_only=True)["state"]
    return states


def plain_loop(model: Any, batches: list[dict], *, lr: float, weight_decay: float, seed: int) -> float:
    """The bare local steps: seed, AdamW, forward/backward/step over ready batches. Returns the mean loss."""
    import torch

    torch.manual_seed(seed)  # dropout, as train_steps seeds it
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    model.train()
    total, seen = 0.0, 0
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total += float(loss.detach()) * len(batch["labels"])
        seen += len(batch["labels"])
    model.eval()
    return total / max(seen, 1)


@dataclass
class BareTiming:
    steps: float  # the plain loop, all (round, client) pairs
    cutting: float  # cutting the same batches (randperm + slicing), timed apart from the steps
    losses: dict[tuple[int, int], float]  # mean loss per (round, partition id)
    tokens: int  # tokens the steps ran over (attention_mask ones; for tasks without a mask, examples)


def run_bare(workspace: Any, plan: list[dict], states: dict[int, dict]) -> BareTiming:
    """Time the plain loop for every (round, client) of ``plan``.

    Per client, outside the loop's clock: loading the round-start state (untimed) and cutting the batches
    with the client's seed (timed separately, as ``cutting``).
    """
    import torch

    from ffm.models import load_trainable_state
    from ffm.strategies.offset import round_seed
    from ffm.tasks import step_batches

    job, seconds, cutting, losses, tokens = workspace.job, 0.0, 0.0, {}, 0
    for line in plan:
        rnd = line["round"]
        for client in line["clients"]:
            party = client["partition_id"]
            seed = round_seed(job.seed, rnd, salt=1000 + party)
            load_trainable_state(workspace.model, states[rnd])
            data = workspace.examples("train", party)
            steps = workspace.local_steps(party)
            start = time.perf_counter()
            batches = list(step_batches(data, job.train.batch_size, steps, torch.Generator().manual_seed(seed)))
            cutting += time.perf_counter() - start
            tokens += sum(int(b["attention_mask"].sum()) if "attention_mask" in b else len(b["labels"])
                          for b in batches)
            start = time.perf_counter()
            losses[rnd, party] = plain_loop(
                workspace.model, batches, lr=job.train.lr, weight_decay=job.train.weight_decay, seed=seed
            )
            seconds += time.perf_counter() - start
    return BareTiming(seconds, cutting, losses, tokens)


def warm_up(workspace: Any) -> None:
    """Tokenize every client's data and take one untimed step, so neither side pays first-call costs."""
    from ffm.models import load_trainable_state

    for party in range(workspace.num_parties):
        workspace.examples("train", party)
    workspace.examples("test")
    from ffm.tasks import batches

    first = next(batches(workspace.examples("train", 0), workspace.job.train.batch_size))
    plain_loop(workspace.model, [first], lr=workspace.job.train.lr, weight_decay=0.0, seed=0)
    load_trainable_state(workspace.model, workspace.initial_state)


def measure_overhead(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from ffm.workspace import workspace_for

    overrides = overhead_overrides(args)
    job0 = make_job(args.config, overrides, scratch / "fed-0")
    t0 = time.perf_counter()
    workspace = workspace_for(job0)
    warm_up(workspace)
    setup = time.perf_counter() - t0
    clocks = Clocks()
    feds: list[FedTiming] = []
    bares: list[BareTiming] = []
    plan: list[dict] = []
    states: dict[int, dict] = {}
    for rep in range(args.repeats):
        print(f"[overhead] federated run {rep + 1}/{args.repeats} ...", flush=True)
        feds.append(run_federated(make_job(args.config, overrides, scratch / f"fed-{rep}"), clocks))
        if rep == 0:
            plan = read_rounds(feds[0].run_dir)
            states = round_start_states(workspace, feds[0].run_dir, len(plan))
        print(f"[overhead] bare run {rep + 1}/{args.repeats} ...", flush=True)
        bares.append(run_bare(workspace, plan, states))
    client_losses = {(ln["round"], c["partition_id"]): c["train_loss"] for ln in plan for c in ln["clients"]}
    loss_diff = max(abs(b.losses[key] - value) for b in bares for key, value in client_losses.items())
    return {
        "job": job0,
        "overrides": overrides,
        "setup": setup,
        "feds": feds,
        "bares": bares,
        "loss_diff": loss_diff,
        "steps": sum(workspace.local_steps(c["partition_id"]) for ln in plan for c in ln["clients"]),
        "plan": plan,
    }


def profile_federated(args: argparse.Namespace, scratch: Path, target: Path) -> None:
    """cProfile one more federated run of the overhead job; keep the ffm/flwr lines by cumulative time."""
    import cProfile
    import io
    import pstats

    from ffm.runtime import run_local

    print("[overhead] profiled federated run ...", flush=True)
    job = make_job(args.config, overhead_overrides(args), scratch / "fed-profiled")
    profiler = cProfile.Profile()
    profiler.runcall(run_local, job)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).sort_stats("cumulative")
    stats.print_stats(r"(/ffm/|/flwr/|peft_model|torch/optim|torch/_tensor|module\.py)", 60)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text.getvalue())


def overhead_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"data.max_examples={args.max_examples}",
        f"data.test_fraction={args.test_fraction}",
        f"federation.num_clients={args.clients}",
        f"federation.rounds={args.rounds}",
        "federation.fraction_train=1.0",
        "federation.fraction_evaluate=0",
        f"train.local_steps={args.local_steps}",
        *args.set,
    ]


# ----------------------------------------------------------------------------------------------------
# 2 and 3. Peak RSS and bytes: each case in its own process


def child_main(spec: dict[str, Any]) -> None:
    """Build the workspace, note the peak RSS, run the job, note it again; print one RESULT line."""
    quiet_libraries()
    set_threads(spec["threads"])
    from flwr.app import ArrayRecord

    from ffm.models import state_nbytes
    from ffm.runtime import run_local
    from ffm.workspace import workspace_for

    job = make_job(spec["config"], spec["overrides"], Path(spec["run_dir"]))
    workspace = workspace_for(job)
    result: dict[str, Any] = {
        "peak_rss_workspace": peak_rss_bytes(),
        "update_bytes": state_nbytes(ArrayRecord(workspace.initial_state)),
        "tensor_bytes": sum(t.numel() * t.element_size() for t in workspace.initial_state.values()),
        "trainable_params": sum(t.numel() for t in workspace.initial_state.values()),
        "total_params": sum(p.numel() for p in workspace.model.parameters()),
    }
    start = time.perf_counter()
    run_local(job)
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_run"] = peak_rss_bytes()
    first = read_rounds(Path(job.run_dir))[0]
    result.update(bytes_up=first["bytes_up"], bytes_down=first["bytes_down"], clients=len(first["clients"]))
    print("RESULT " + json.dumps(result), flush=True)


def run_child(args: argparse.Namespace, scratch: Path, name: str, overrides: list[str]) -> dict:
    print(f"[memory/bytes] {name} (own process) ...", flush=True)
    spec = {"config": args.config, "overrides": overrides, "run_dir": str(scratch / name), "threads": args.threads}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, cwd=REPO
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def process_overrides(args: argparse.Namespace) -> list[str]:
    """The small job of sections 2 and 3: one round, one local step, short inputs."""
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
    cases["full"] = run_child(args, scratch, "full", full)
    return cases


# ----------------------------------------------------------------------------------------------------
# The report


def machine_lines() -> list[str]:
    import flwr
    import peft
    import torch
    import transformers

    cpu = next((x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")), "?")
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu}; os.cpu_count()={os.cpu_count()}, usable cores={len(os.sched_getaffinity(0))}, "
        f"torch threads={torch.get_num_threads()}, {ram:.0f} GiB RAM",
        f"- python {platform.python_version()}, torch {torch.__version__}, flwr {flwr.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}",
    ]


def _runs(values: list[float], digits: int = 2) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def overhead_rows(o: dict[str, Any]) -> list[tuple[str, float, str]]:
    feds, bares = o["feds"], o["bares"]
    fed = min(feds, key=lambda f: f.rounds)
    rest = [f.total - f.rounds - f.server_eval for f in feds]
    return [
        (
            "bare PyTorch loop: seed, AdamW, fwd/bwd/step of the same local steps",
            min(b.steps for b in bares),
            _runs([b.steps for b in bares]),
        ),
        (
            "federated rounds (server + LocalGrid + ClientApp), global eval excluded",
            fed.rounds,
            _runs([f.rounds for f in feds]),
        ),
        (
            "&nbsp;&nbsp;of which inside the ClientApp's `train_steps`",
            fed.train_steps,
            _runs([f.train_steps for f in feds]),
        ),
        (
            "&nbsp;&nbsp;of which ClientApp outside `train_steps` (parse config, state in, state out, reply)",
            fed.client_app - fed.train_steps,
            _runs([f.client_app - f.train_steps for f in feds]),
        ),
        (
            "&nbsp;&nbsp;of which server + LocalGrid (sampling, messages, guard, FedAvg)",
            fed.rounds - fed.client_app,
            _runs([f.rounds - f.client_app for f in feds]),
        ),
        (
            "batch cutting of the same batches (randperm + slicing), timed apart in the bare runs",
            min(b.cutting for b in bares),
            _runs([b.cutting for b in bares], 3),
        ),
        (
            "not counted: server evaluate_fn (global test eval, metrics line, checkpoint; rounds 0..R)",
            fed.server_eval,
            _runs([f.server_eval for f in feds]),
        ),
        ("not counted: rest of run_local (run dir, strategy, final save_pretrained, summary)", min(rest), _runs(rest)),
        (
            "not counted: one-time setup (workspace, tokenizing every client, one warm-up step)",
            o["setup"],
            f"{o['setup']:.2f}",
        ),
    ]


def overhead_section(o: dict[str, Any]) -> list[str]:
    feds, bares, job = o["feds"], o["bares"], o["job"]
    fed = min(feds, key=lambda f: f.rounds)
    ratio = fed.rounds / min(b.steps for b in bares)
    cut = min(b.cutting for b in bares)
    inside = [f.rounds / (f.train_steps - cut) for f in feds]
    calls = sum(len(line["clients"]) for line in o["plan"])
    per_call = [1000 * (f.rounds - f.train_steps) / calls for f in feds]
    per_step = [1000 * b.steps / o["steps"] for b in bares]
    return [
        "## 1. Overhead of the federated rounds over the bare local steps",
        "",
        f"Job: {job.federation.num_clients} clients x {job.federation.rounds} rounds, `train.local_steps="
        f"{job.train.local_steps}` = {o['steps']} optimizer steps; batch {job.train.batch_size}, max_length "
        f"{job.model.max_length}, model `{job.model.name}`, method `{job.method.name}` (r={job.method.r}, "
        f"targets {','.join(job.method.targets)}, head trained), {job.data.source} with "
        f"`data.max_examples={job.data.max_examples}`, partitioner {job.data.partitioner}, strategy "
        f"{job.strategy.name}, no client evaluation. Config `{o['config']}` plus "
        f"`{' '.join(o['overrides'])}`. Flower logging at WARNING. torch threads: {o['threads']}.",
        "",
        f"Runs alternate federated, bare, federated, bare ({len(feds)} each); 'seconds' is the minimum (for the "
        "breakdown rows: of the fastest federated run), 'every run' lists them in order. Same computation: the "
        "largest difference between a client's reported train loss and the bare loop's loss for the same "
        f"(round, client) is {o['loss_diff']:.1e}.",
        "",
        "| what | seconds | every run |",
        "| --- | ---: | --- |",
        *[f"| {name} | {value:.2f} | {runs} |" for name, value, runs in overhead_rows(o)],
        f"| **overhead ratio** = min federated rounds / min bare loop | **{ratio:.3f}** | pairwise: "
        f"{_runs([f.rounds / b.steps for f, b in zip(feds, bares, strict=True)], 3)} |",
        f"| same ratio within each federated run = rounds / (`train_steps` - batch cutting) | {min(inside):.3f} "
        f"| {_runs(inside, 3)} |",
        f"| fixed cost per client call: (rounds - `train_steps`) / {calls} calls, ms | {min(per_call):.1f} "
        f"| {_runs(per_call, 1)} |",
        f"| bare cost per optimizer step, ms | {min(per_step):.1f} | {_runs(per_step, 1)} |",
        "",
        "The second ratio divides each federated run by the training it did itself (minus the separately "
        "timed batch cutting), so both sides saw the same machine load; the first compares separate runs, as "
        "asked, and carries the machine's run-to-run noise. The last two rows give the ratio for other sizes: "
        "about 1 + (fixed cost per call) / (local steps x cost per step).",
        "",
    ]


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
        "## 2. Peak RSS by number of clients (one process per row, LoRA)",
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
        "## 3. Bytes per round: LoRA vs full fine-tuning",
        "",
        f"Same job as section 2; `full` adds `method.name=full` and runs {args.full_clients} clients "
        f"(`--full-clients`). The {n}-client rows are {n} x one update each way (FedAvg sends every sampled "
        "client the global state and gets one update back); the measured rows check that against the runs' "
        f"`metrics.jsonl`. Total parameters: {lora['total_params']:,} (LoRA-wrapped model) / "
        f"{full['total_params']:,} (plain model).",
        "",
        "| | LoRA | full |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {a} | {b} |" for name, a, b in rows],
        f"| **bytes per round, full / LoRA** | 1 | **{full['update_bytes'] / lora['update_bytes']:,.0f}x** |",
        "",
    ]


def report(args: argparse.Namespace, overhead: dict, cases: dict, seconds: float, load: tuple) -> str:
    lines = [
        "# ffm federation overhead benchmark",
        "",
        *machine_lines(),
        f"- load average (1 min) at start / end: {load[0]:.2f} / {os.getloadavg()[0]:.2f} (other work shares "
        "the cores)",
        f"- command: `{' '.join(['python', *sys.argv])}`; whole benchmark {seconds:.0f} s",
        "",
        *overhead_section(overhead),
        *(memory_section(cases, args) + bytes_section(cases, args) if cases else []),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="job file the overhead job starts from")
    parser.add_argument("--clients", type=int, default=10, help="clients of the overhead job and the small RSS case")
    parser.add_argument("--many-clients", type=int, default=100, help="clients of the large RSS case")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the overhead job")
    parser.add_argument("--local-steps", type=int, default=2, help="train.local_steps of the overhead job")
    parser.add_argument("--max-examples", type=int, default=500, help="data.max_examples of the overhead job")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="data.test_fraction of the overhead job")
    parser.add_argument("--repeats", type=int, default=3, help="federated and bare runs each (min is kept)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides, overhead job")
    parser.add_argument("--full-clients", type=int, default=10, help="clients of the method.name=full run")
    parser.add_argument("--rss-max-examples", type=int, default=1000, help="data.max_examples of RSS/bytes runs")
    parser.add_argument("--rss-test-fraction", type=float, default=0.05, help="data.test_fraction of RSS/bytes runs")
    parser.add_argument("--rss-batch-size", type=int, default=4, help="train.batch_size of RSS/bytes runs")
    parser.add_argument("--rss-max-length", type=int, default=32, help="model.max_length of RSS/bytes runs")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0 = torch's default). 1 by default: on a shared 2-core machine two OpenMP threads "
        "stall each other whenever another process holds a core, which makes timings swing several-fold",
    )
    parser.add_argument("--no-processes", action="store_true", help="skip sections 2 and 3 (memory, bytes)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one federated run (see README)")
    parser.add_argument("--output", default=str(RESULTS), help="where the Markdown table goes")
    parser.add_argument("--keep-runs", action="store_true", help="keep the scratch run directories")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    os.chdir(REPO)
    load, start = os.getloadavg(), time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="ffm-bench-"))
    try:
        quiet_libraries()
        set_threads(args.threads)
        overhead = measure_overhead(args, scratch)
        overhead["config"], overhead["threads"] = args.config, torch_threads()
        if args.profile:
            profile_federated(args, scratch, Path(args.output).with_name("overhead-profile.txt"))
        cases = {} if args.no_processes else measure_processes(args, scratch)
        text = report(args, overhead, cases, time.perf_counter() - start, load)
    finally:
        if not args.keep_runs:
            shutil.rmtree(scratch, ignore_errors=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n")
    print(text)
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
