"""Benchmark, run by hand (not a test): what the federation costs on top of the training it carries.

Writes ``bench/results/overhead.md`` (also printed): the overhead ratio. The same job is run as simulated
federated rounds (ServerApp + LocalGrid + ClientApp, i.e. ``ffm.runtime.run_local``) and as a plain PyTorch
loop doing the very same local steps: the same shared model object, each client's steps from the same
round-start state (the initial state, then each round's checkpoint), the same batches and seeds (``derive_seed``
with ``Salt.LOCAL_TRAINING`` and ``step_batches``, as ``ffm.client`` uses them; the losses must match exactly).

The federated side is timed through ffm's observer seam, nothing patched: the benchmark's ``RoundClock``
observer (``report.to=bench_clock``, bench/runs.py) gets the server's timings of every round. Only round time
counts: the sum of ``between`` (end of one round's ``evaluate_fn`` to the start of the next: sampling,
messages, ClientApp calls, aggregation). The ``evaluate_fn`` itself (global test evaluation, metrics line,
checkpoint) is shown apart and left out, and so is the one-time setup (the workspace is built and every
client's data tokenized before any clock starts). Bare and federated runs alternate; the minimum of each is
kept. A second ratio divides each federated run by the clients' own ``train_seconds`` (time inside
``train_steps``, reported in every metrics line), which machine noise cannot skew.

Peak RSS by number of clients and bytes per round (LoRA vs full) are bench/footprint.py's.

Launch:  .venv/bin/python bench/overhead.py          (or `make bench`; --help lists the sizes)
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import runs

RESULTS = runs.REPO / "bench" / "results" / "overhead.md"


@dataclass
class FedTiming:
    total: float  # run_local, end to end
    rounds: float  # sum over rounds >= 1 of `between`: [end of evaluate_fn(r-1), start of evaluate_fn(r)]
    server_eval: float  # evaluate_fn: global test evaluation + metrics line + checkpoint (round 0 included)
    client_app: float  # LocalGrid.client_seconds: every ClientApp call, whole
    train_steps: float  # the clients' train_seconds: inside train_steps, as called by the ClientApp
    run_dir: Path


def run_federated(job: Any) -> FedTiming:
    """``run_local`` of a job made with :func:`runs.clocked` overrides; its times from its RoundClock."""
    from ffm.runtime import run_local

    start = time.perf_counter()
    _, grid = run_local(job)
    total = time.perf_counter() - start
    clock = runs.clock_of(Path(job.run_dir))
    return FedTiming(total, clock.rounds, clock.server_eval, grid.client_seconds, clock.train_steps,
                     Path(job.run_dir))


def round_start_states(workspace: Any, run_dir: Path, rounds: int) -> dict[int, dict]:
    """The global state each round starts from: the initial state, then each round's checkpoint."""
    import torch

    from ffm.run_dir import RunDirectory

    run = RunDirectory(run_dir)
    states = {1: workspace.initial_state}
    for rnd in range(2, rounds + 1):
        states[rnd] = torch.load(run.checkpoint_path(rnd - 1), map_location="cpu", weights_only=True)["state"]
    return states


def plain_loop(workspace: Any, batches: list[dict], *, lr: float, weight_decay: float, seed: int) -> float:
    """The bare local steps: seed, AdamW, forward (the task's loss)/backward/step over ready batches. Returns the
    mean loss."""
    import torch

    model = workspace.model
    torch.manual_seed(seed)  # dropout, as the ClientApp seeds it
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    model.train()
    total, seen = 0.0, 0
    for batch in batches:
        loss = workspace.task.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n = len(next(iter(batch.values())))
        total += float(loss.detach()) * n
        seen += n
    model.eval()
    return total / max(seen, 1)


@dataclass
class BareTiming:
    steps: float  # the plain loop, all (round, client) pairs
    cutting: float  # cutting the same batches (randperm + slicing), timed apart from the steps
    losses: dict[tuple[int, int], float]  # mean loss per (round, partition id)
    tokens: int  # tokens the steps ran over (attention_mask ones; for tasks without a mask, examples)


def run_bare(workspace: Any, plan: list[dict], states: dict[int, dict]) -> BareTiming:
    """Time the plain loop for every (round, client) of ``plan`` (the federated run's metrics lines).

    Per client, outside the loop's clock: loading the round-start state (untimed) and cutting the batches
    with the client's seed (timed separately, as ``cutting``). The number of steps is the one the client
    reported (``local_steps``).
    """
    import torch

    from ffm.keys import Salt, derive_seed
    from ffm.tasks import step_batches

    job, seconds, cutting, losses, tokens = workspace.job, 0.0, 0.0, {}, 0
    for line in plan:
        rnd = line["round"]
        for client in line["clients"]:
            party = client["partition_id"]
            seed = derive_seed(job.seed, rnd, Salt.LOCAL_TRAINING, party)
            workspace.load(states[rnd])
            data = workspace.examples("train", party)
            start = time.perf_counter()
            generator = torch.Generator().manual_seed(seed)
            batches = list(step_batches(data, job.train.batch_size, client["local_steps"], generator))
            cutting += time.perf_counter() - start
            tokens += sum(int(b["attention_mask"].sum()) if "attention_mask" in b else len(b["labels"])
                          for b in batches)
            start = time.perf_counter()
            losses[rnd, party] = plain_loop(
                workspace, batches, lr=job.train.lr, weight_decay=job.train.weight_decay, seed=seed
            )
            seconds += time.perf_counter() - start
    return BareTiming(seconds, cutting, losses, tokens)


def warm_up(workspace: Any) -> None:
    """Tokenize every client's data and take one untimed step, so neither side pays first-call costs."""
    from ffm.tasks import batches

    for party in range(workspace.num_parties):
        workspace.examples("train", party)
    workspace.examples("test")
    first = next(batches(workspace.examples("train", 0), workspace.job.train.batch_size))
    plain_loop(workspace, [first], lr=workspace.job.train.lr, weight_decay=0.0, seed=0)
    workspace.load(workspace.initial_state)


def measure_overhead(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from ffm.workspace import workspace_for

    overrides = overhead_overrides(args)
    job0 = runs.make_job(args.config, overrides, scratch / "fed-0")
    t0 = time.perf_counter()
    workspace = workspace_for(job0)
    warm_up(workspace)
    setup = time.perf_counter() - t0
    feds: list[FedTiming] = []
    bares: list[BareTiming] = []
    plan: list[dict] = []
    states: dict[int, dict] = {}
    for rep in range(args.repeats):
        print(f"[overhead] federated run {rep + 1}/{args.repeats} ...", flush=True)
        feds.append(run_federated(runs.make_job(args.config, runs.clocked(overrides), scratch / f"fed-{rep}")))
        if rep == 0:
            plan = runs.read_rounds(feds[0].run_dir)
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
        "steps": sum(c["local_steps"] for ln in plan for c in ln["clients"]),
        "plan": plan,
    }


def profile_federated(args: argparse.Namespace, scratch: Path, target: Path) -> None:
    """cProfile one more federated run of the overhead job; keep the ffm/flwr lines by cumulative time."""
    import cProfile
    import io
    import pstats

    from ffm.runtime import run_local

    print("[overhead] profiled federated run ...", flush=True)
    job = runs.make_job(args.config, overhead_overrides(args), scratch / "fed-profiled")
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
# The report


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
        "## Overhead of the federated rounds over the bare local steps",
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
        "Where the federated seconds come from: ffm's observer seam (`report.to=bench_clock`, the `RoundClock` of "
        "bench/runs.py) gets the server's timings of every round: rounds = the sum of `between` over rounds >= 1, "
        "evaluate_fn = `evaluate` + `checkpoint`; `train_steps` is the sum of the clients' `train_seconds` "
        "(metrics.jsonl), the ClientApp's whole calls are the LocalGrid's `client_seconds`.",
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


def report(overhead: dict, seconds: float, load: tuple) -> str:
    title = "ffm federation overhead benchmark"
    return "\n".join([*runs.report_head(title, load, seconds), *overhead_section(overhead)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = runs.process_parser(__doc__.split("\n\n")[0], RESULTS, "job file the overhead job starts from")
    parser.add_argument("--clients", type=int, default=10, help="clients of the overhead job")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the overhead job")
    parser.add_argument("--local-steps", type=int, default=2, help="train.local_steps of the overhead job")
    parser.add_argument("--max-examples", type=int, default=500, help="data.max_examples of the overhead job")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="data.test_fraction of the overhead job")
    parser.add_argument("--repeats", type=int, default=3, help="federated and bare runs each (min is kept)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides, overhead job")
    parser.add_argument("--profile", action="store_true", help="also cProfile one federated run (see README)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    os.chdir(runs.REPO)
    load, start = os.getloadavg(), time.perf_counter()
    with runs.scratch_dir("ffm-bench-", keep=args.keep_runs) as scratch:
        runs.quiet_libraries()
        runs.set_threads(args.threads)
        overhead = measure_overhead(args, scratch)
        overhead["config"], overhead["threads"] = args.config, runs.torch_threads()
        if args.profile:
            profile_federated(args, scratch, args.out.with_name("overhead-profile.txt"))
        text = report(overhead, time.perf_counter() - start, load)
    runs.publish(text, args.out)


if __name__ == "__main__":
    main()
