"""Benchmark, run by hand (not a test): aggregation rules under non-IID clients, LoRA aggregation, and attackers.

AG News with the real MiniLM + LoRA (r=8 on query/value), 10 clients. Every run has the same budget: a subset
of ``--max-examples`` articles, ``--rounds`` rounds of ``--local-steps`` local steps per client, all clients
every round, the server's test set for accuracy. Sections:

1. Strategies at Dirichlet alpha 0.1 and 0.5: FedAvg, FedAvgM, FedProx, FedAdam, FedYogi with AdamW (the demo's
   lr 5e-3); SCAFFOLD and FedNova read updates as SGD steps, so they run with SGD (lr ``--sgd-lr``) beside a
   FedAvg with the same SGD, their fair reference.
2. LoRA aggregation at alpha 0.5: naive (= the FedAvg run) vs exact (FedEx-LoRA), and heterogeneous ranks
   (client tiers of rank 2, 4 and 8) vs uniform rank 8; bytes per round of each.
3. 20% sign-flipping attackers (scale 10) at alpha 0.5: FedAvg, FedMedian, FedTrimmedAvg (beta 0.2), Krum
   (f=2) and Bulyan (f=1: flwr's Bulyan needs n >= 4f + 3, so 10 clients allow f=1 only), against the
   attack-free FedAvg.

Runs are cached in --work (a run directory with summary.json is reused) and run ``--workers`` at a time, each
a `ffm run` process with one torch thread. Writes ``bench/results/strategies.md`` and ``strategies.png``.

Launch:  .venv/bin/python bench/strategies.py [--workers 2] [--max-examples 1500]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runs import REPO, acc, budget, budget_parser, curve, mb, run_cached

ATTACK = ["client.mods=[attack]", "client.attack=sign_flip", "client.attackers=0.2", "client.attack_scale=10"]


def plan(args: argparse.Namespace) -> dict[str, list[str]]:
    """Run name -> its overrides of configs/demo.yaml (besides the shared budget), in the order they run."""
    runs: dict[str, list[str]] = {}
    sgd = ["train.optimizer=sgd", f"train.lr={args.sgd_lr}"]
    stragglers = "train.steps_spread=0.75"
    rules = {"fedmedian": [], "fedtrimmedavg": ["strategy.beta=0.2"], "krum": ["strategy.num_malicious_nodes=2"],
             "bulyan": ["strategy.num_malicious_nodes=1"]}
    for alpha in (0.5, 0.1):
        a = f"data.alpha={alpha}"
        runs[f"a{alpha}-fedavg"] = [a, "strategy.name=fedavg"]
        if alpha == 0.5:  # the attack and LoRA sections share alpha 0.5's attack-free FedAvg as reference
            runs["a0.5-attack-fedavg"] = [a, "strategy.name=fedavg", *ATTACK]
            runs.update({f"a0.5-attack-{rule}": [a, f"strategy.name={rule}", *keys, *ATTACK]
                         for rule, keys in rules.items()})
            runs["a0.5-lora-exact"] = [a, "method.aggregation=exact"]
            runs["a0.5-lora-ranks-2-4-8"] = [a, "method.client_ranks=[2,4,8]"]
        runs[f"a{alpha}-fedprox"] = [a, "strategy.name=fedprox", "strategy.proximal_mu=0.01"]
        runs[f"a{alpha}-fedavg-sgd"] = [a, "strategy.name=fedavg", *sgd]
        runs[f"a{alpha}-scaffold-sgd"] = [a, "strategy.name=scaffold", *sgd]
        runs[f"a{alpha}-fedavg-sgd-stragglers"] = [a, "strategy.name=fedavg", *sgd, stragglers]
        runs[f"a{alpha}-fednova-sgd-stragglers"] = [a, "strategy.name=fednova", *sgd, stragglers]
        runs[f"a{alpha}-fedavgm"] = [a, "strategy.name=fedavgm"]
        runs[f"a{alpha}-fedadam"] = [a, "strategy.name=fedadam", "strategy.eta=0.01"]
        runs[f"a{alpha}-fedyogi"] = [a, "strategy.name=fedyogi", "strategy.eta=0.01"]
    return runs


def run(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    return run_cached(args.work, name, REPO / "configs" / "demo.yaml", [*budget(args), *overrides])


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("alpha 0.1", [n for n in results if n.startswith("a0.1-")]),
              ("alpha 0.5", [n for n in results if n.startswith("a0.5-") and "attack" not in n]),
              ("alpha 0.5, 20% sign-flip attackers", [n for n in results if "attack" in n])]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), sharey=True)
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            res = results[name]
            if "error" in res:
                continue
            ax.plot([ln["round"] for ln in res["lines"]], [ln["test_accuracy"] for ln in res["lines"]], "-o",
                    ms=3, label=name.split("-", 1)[1])
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = budget_parser(__doc__.splitlines()[0], "strategies.md")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sgd-lr", type=float, default=0.3, help="lr of the SGD runs (0.05 left LoRA undertrained)")
    parser.add_argument("--only", nargs="*", default=[], help="run names to (re)run and report (default: all)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = {k: v for k, v in plan(args).items() if not args.only or k in args.only}
    if args.report_only:
        runs = {k: v for k, v in runs.items() if (args.work / k / "summary.json").is_file()}
    with ThreadPoolExecutor(args.workers) as pool:
        results = dict(zip(runs, pool.map(lambda kv: run(kv[0], kv[1], args), runs.items()), strict=True))
    plot(results, args.out.with_suffix(".png"))
    rows = lambda names: "\n".join(  # noqa: E731
        f"| {n.split('-', 1)[1]} | {acc(results[n])} | {curve(results[n])} | {mb(results[n], 'bytes_down')} | "
        f"{mb(results[n], 'bytes_up')} |" for n in names if n in results)
    head = ("| run | final test accuracy | per round (0..R) | MB down / round | MB up / round |\n"
            "|---|---:|---|---:|---:|")
    section = lambda prefix, pred: [n for n in results if n.startswith(prefix) and pred(n)]  # noqa: E731
    text = f"""# Aggregation rules, LoRA aggregation and attackers on AG News

`{' '.join(['.venv/bin/python', 'bench/strategies.py', *sys.argv[1:]])}` — {time.strftime('%Y-%m-%d')},
{time.perf_counter() - started:.0f} s for what was not cached (runs in `{args.work}`), {args.workers} at a time.

Budget of every run: MiniLM + LoRA (r=8, query/value), AG News subset of {args.max_examples} articles (20% the
global test set), 10 clients all training every round, {args.rounds} rounds x {args.local_steps} local steps,
batch 16, seed {args.seed}. AdamW lr 5e-3 unless the name says sgd (SGD lr {args.sgd_lr}). Accuracy is on the
server's held-out test set; one seed, so differences of a point or two are within noise.

## 1. Strategies, Dirichlet alpha 0.1 (strong label skew)

{head}
{rows(section('a0.1-', lambda n: True))}

## 2. Strategies, Dirichlet alpha 0.5

{head}
{rows(section('a0.5-', lambda n: 'attack' not in n and 'lora' not in n))}

The `-stragglers` runs draw each client's steps per round from 2..8 of its 8 (`train.steps_spread=0.75`),
the case FedNova is for. A run missing from a table was not run (see `--report-only`).

## 3. LoRA aggregation, alpha 0.5 (naive = `fedavg` above)

{head}
{rows(['a0.5-fedavg', 'a0.5-lora-exact', 'a0.5-lora-ranks-2-4-8'])}

Exact aggregation (FedEx-LoRA) sends the base deltas of the 12 adapted 384x384 matrices down every round after
the first; clients send adapters only. Heterogeneous ranks: tiers of rank 2, 4 and 8 by partition id (the
wire format stays zero-padded to rank 8, so bytes do not fall here).

## 4. 20% sign-flipping attackers (2 of 10 clients send -10 x their update), alpha 0.5

Attack-free reference: `fedavg` in section 2.

{head}
{rows(section('a0.5-attack', lambda n: True))}

![accuracy per round]({args.out.with_suffix('.png').name})
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
