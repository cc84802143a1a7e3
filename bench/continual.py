"""Benchmark, run by hand (not a test): forgetting in a class-incremental stream, and what each method buys.

BBC News in three stages (business|entertainment, politics|sports, tech), the real MiniLM + LoRA r=8,
10 clients (each stage split IID across them), FedAvg, 2 rounds x 6 local steps per stage
(configs/continual_bbc.yaml). Methods: naive fine-tuning, replay (16 examples per client; the centralized
run keeps 160, the same memory in all), EWC (lambda 1e4, and 1e6 federated), per-task adapters (a fresh
LoRA + head rows per stage, routed by stage at evaluation: the task identity is given, an easier problem),
and the joint upper bound (every stage's data from the start). Each federated and centralized.

Writes ``bench/results/continual.md`` and ``continual.png`` (average accuracy and backward transfer).

Launch:  .venv/bin/python bench/continual.py [--work runs/bench-continual] [--report-only]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runs import REPO, run_cached

CONFIG = REPO / "configs" / "continual_bbc.yaml"
METHODS = {  # name -> (label, overrides)
    "naive": ("naive fine-tuning", ["continual.approach=naive"]),
    "replay": ("replay (16 / client)", ["continual.approach=replay"]),
    "ewc": ("EWC (lambda 1e4)", ["continual.approach=ewc", "continual.ewc_lambda=10000"]),
    "ewc-1e6": ("EWC (lambda 1e6)", ["continual.approach=ewc", "continual.ewc_lambda=1000000"]),
    "adapters": ("per-task adapters (routed by stage)", ["continual.approach=adapters"]),
    "joint": ("joint upper bound", ["continual.approach=joint"]),
}
MODES = {"federated": [], "centralized": ["mode=centralized"],
         # the pooled party takes 10x the sequential steps per round: at the clients' 5e-3 it is unstable (naive
         # reaches 0.55 on stage 1, federated 0.98), so the centralized baseline is also run at 1e-3
         "centralized, lr 1e-3": ["mode=centralized", "train.lr=1e-3"]}
SKIP = {("ewc-1e6", "centralized"), ("ewc-1e6", "centralized, lr 1e-3")}


def _overrides(method: str, mode: str) -> list[str]:
    extra = ["continual.replay_size=160"] if method == "replay" and mode.startswith("centralized") else []
    return [*METHODS[method][1], *MODES[mode], *extra, "progress=false"]


def _fmt(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def report(results: dict[tuple[str, str], dict], out: Path) -> None:
    lines = ["# Continual learning: BBC News class-incremental in 3 stages", "",
             "Measured by `bench/continual.py` (configs/continual_bbc.yaml): MiniLM + LoRA r=8, 10 clients, FedAvg, "
             "2 rounds x 6 local steps per stage; the centralized baseline gets the same steps in total. R[i][j] is "
             "the test accuracy after stage i on stage j's classes (a future stage's classes are not in the head "
             "yet: 0). Average = mean of the last row; BWT = mean change on each earlier stage since it was "
             "learnt (negative = forgetting); party BWT = the same on each party's own validation split, "
             "averaged. One seed.", "",
             "| method | mode | average accuracy | BWT | party BWT | R (rows: after stage 0, 1, 2) | wall s |",
             "|---|---|---:|---:|---:|---|---:|"]
    for (method, mode), result in results.items():
        if "error" in result:
            lines.append(f"| {METHODS[method][0]} | {mode} | {result['error'][:60]} | | | | |")
            continue
        c = result["summary"]["continual"]
        matrix = " / ".join(" ".join(f"{v:.2f}" for v in row) for row in c["R"])
        lines.append(f"| {METHODS[method][0]} | {mode} | {_fmt(c['average'])} | "
                     f"{_fmt(c['backward_transfer'], True)} | {_fmt(c.get('party_mean_backward_transfer'), True)} | "
                     f"{matrix} | {result['summary']['wall_time_s']:.0f} |")
    out.write_text("\n".join(lines) + "\n")
    plot(results, out.with_suffix(".png"))
    print(out.read_text())


def plot(results: dict[tuple[str, str], dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(METHODS)
    for offset, mode in ((-0.27, "federated"), (0.0, "centralized"), (0.27, "centralized, lr 1e-3")):
        got = [(i, results.get((m, mode), {})) for i, m in enumerate(names)]
        got = [(i, r["summary"]["continual"]) for i, r in got if "summary" in r]
        axes[0].bar([i + offset for i, _ in got], [c["average"] for _, c in got], width=0.27, label=mode)
        axes[1].bar([i + offset for i, _ in got], [c["backward_transfer"] or 0.0 for _, c in got], width=0.27,
                    label=mode)
    for ax, title in zip(axes, ("average accuracy after the last stage", "backward transfer (negative = forgetting)"),
                         strict=True):
        short = {"naive": "naive", "replay": "replay", "ewc": "EWC 1e4", "ewc-1e6": "EWC 1e6",
                 "adapters": "adapters (routed)", "joint": "joint bound"}
        ax.set_xticks(range(len(names)), [short[m] for m in names], rotation=30, ha="right")
        ax.set_title(title)
        ax.axhline(0, color="gray", lw=0.5)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-continual")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "continual.md")
    parser.add_argument("--report-only", action="store_true", help="report the runs already done; run nothing")
    parser.add_argument("--modes", default="", help="only these modes, separated by ; (default: all)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for method in METHODS:
        for mode in MODES:
            if (method, mode) in SKIP:
                continue
            if args.modes and mode not in args.modes.split(";"):
                continue
            name = f"{method}-{mode.replace(', lr ', '-lr').replace(' ', '')}"
            results[(method, mode)] = run_cached(args.work, name, CONFIG, _overrides(method, mode),
                                                 report_only=args.report_only)
    report(results, args.out)


if __name__ == "__main__":
    main()
