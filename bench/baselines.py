"""Benchmark, run by hand (not a test): are the baselines strong enough to compare against?

The same job runs in the three modes (federated, centralized = all data pooled at one party, local = every
client alone) on AG News with the real MiniLM + LoRA, 10 Dirichlet(0.5) clients, the demo's budget of one
local epoch per round. Two settings:

1. untuned: the demo's shared hyper-parameters (lr 5e-3, constant) for every mode, the setting in which the
   centralized baseline collapsed to the majority class on an unseen data set;
2. tuned: ``train.scheduler=cosine`` with 10% warmup, and each mode's own learning rate chosen from a grid
   on VALIDATION data only (the final round's validation accuracy: the clients' own splits, pooled for
   centralized), never on the test set.

Runs are cached in --work (a run directory with summary.json is reused), so an interrupted benchmark
continues. Writes ``bench/results/baselines.md`` and ``baselines.png`` (test accuracy per round).

Launch:  .venv/bin/python bench/baselines.py [--max-examples 4000] [--lrs 1e-3,2e-3,5e-3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from runs import REPO, metrics_lines, quiet_libraries, set_threads, shown

MODES = ("centralized", "federated", "local")


def run(work: Path, mode: str, lr: float, scheduler: str, warmup: float, args: argparse.Namespace) -> dict[str, Any]:
    """One run (or its cached result): summary plus the metrics lines."""
    from ffm.config import load_job
    from ffm.runtime import run_local

    run_dir = work / f"{mode}-lr{lr:g}-{scheduler}"
    if not (run_dir / "summary.json").is_file():
        overrides = [
            f"mode={mode}", f"train.lr={lr}", f"train.scheduler={scheduler}", f"train.warmup_ratio={warmup}",
            "data.source=ag_news", f"data.max_examples={args.max_examples}", f"federation.rounds={args.rounds}",
            f"run_dir={run_dir}", "progress=false", f"seed={args.seed}",
        ]
        if run_dir.exists():
            overrides.append("resume=true")
        started = time.perf_counter()
        run_local(load_job(REPO / "configs" / "demo.yaml", overrides))
        print(f"  {run_dir.name}: {time.perf_counter() - started:.0f} s", flush=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"mode": mode, "lr": lr, "scheduler": scheduler, "summary": summary, "lines": metrics_lines(run_dir)}


def val_accuracy(result: dict[str, Any]) -> float:
    return float(result["lines"][-1]["val"]["val_accuracy"])


def row(label: str, result: dict[str, Any]) -> str:
    lines = result["lines"]
    per_round = " → ".join(f"{line['test_accuracy']:.3f}" for line in lines)
    last = lines[-1]
    train_loss = sum(c["train_loss"] for c in last["clients"]) / len(last["clients"])
    return (f"| {label} | {result['mode']} | {result['lr']:g} | {result['scheduler']} | {val_accuracy(result):.4f} "
            f"| **{last['test_accuracy']:.4f}** | {per_round} | {train_loss:.3f} | {last['test_predicted_classes']} |")


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (setting, mode), result in results.items():
        rounds = [line["round"] for line in result["lines"]]
        accuracy = [line["test_accuracy"] for line in result["lines"]]
        ax.plot(rounds, accuracy, "-o" if setting == "tuned" else "--x",
                label=f"{mode}, {setting} (lr {result['lr']:g}, {result['scheduler']})")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title("AG News, MiniLM + LoRA, 10 Dirichlet(0.5) clients")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lrs", default="1e-3,2e-3,5e-3", help="the grid each mode's lr is chosen from")
    parser.add_argument("--untuned-lr", type=float, default=5e-3, help="the demo's shared learning rate")
    parser.add_argument("--modes", default=",".join(MODES), help="which modes to run now (the report needs all three)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared 2-core box)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-baselines")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "baselines.md")
    args = parser.parse_args()

    set_threads(args.threads)
    quiet_libraries()
    lrs = [float(x) for x in args.lrs.split(",")]
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    grid_rows: list[str] = []
    started = time.perf_counter()
    for mode in args.modes.split(","):
        chosen["untuned", mode] = run(args.work, mode, args.untuned_lr, "constant", 0.0, args)
        candidates = [run(args.work, mode, lr, "cosine", 0.1, args) for lr in lrs]
        grid_rows += [row("grid", c) for c in candidates]
        chosen["tuned", mode] = max(candidates, key=val_accuracy)  # validation only, never the test set
    if set(args.modes.split(",")) != set(MODES):
        return  # a partial pass (e.g. one mode per core); run again with every mode for the report
    header = ("| setting | mode | lr | schedule | val acc (chooses) | final test acc | test acc per round "
              "| last train loss | predicted classes |\n|---|---|---|---|---|---|---|---|---|")
    best = "\n".join(row(setting, chosen[setting, mode]) for setting in ("untuned", "tuned") for mode in MODES)
    plot(chosen, args.out.with_suffix(".png"))
    text = f"""# Baselines: federated vs centralized vs local, each with its own learning rate

`{' '.join(['.venv/bin/python', 'bench/baselines.py', *sys.argv[1:]])}` — {time.strftime('%Y-%m-%d')},
{platform.processor() or platform.machine()}, torch threads {args.threads}, {time.perf_counter() - started:.0f} s
of new runs (cached runs reused from `{shown(args.work)}`).

Job: `configs/demo.yaml` on AG News (`data.source=ag_news data.max_examples={args.max_examples}`, stratified:
4 balanced classes, so the majority class scores about 0.25), MiniLM + LoRA r=8, 10 Dirichlet(0.5) clients,
{args.rounds} rounds, one local epoch per round, seed {args.seed}. Every mode gets the same budget of local
steps (centralized takes the whole federation's steps of a round in one trajectory). *Tuned*: cosine schedule
over the whole run with 10% warmup, lr chosen per mode from {lrs} by the final round's validation accuracy
(the clients' own validation splits; pooled for centralized; local: the mean over clients of each one's own
model on its own split). The test set chose nothing.

## Chosen runs

{header}
{best}

![test accuracy per round]({args.out.with_suffix('.png').name})

## Every grid point (tuned setting)

{header}
{chr(10).join(grid_rows)}
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
