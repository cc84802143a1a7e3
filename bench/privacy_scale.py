"""Benchmark, run by hand (not a test): user-level DP at scale, and an epsilon that is audited, not only accounted.

1. **Privacy against utility with many clients** (configs/vit_mnist.yaml: a small ViT from scratch on the 5,000
   MNIST images, split over 1,000 clients as two label-sorted shards each: McMahan et al.'s split, since Dirichlet
   cannot give each of 1,000 clients an image; 4 images each). Clients are Poisson-sampled
   (``federation.sampling=poisson``) at 10, 100 and 1,000 expected per round, the same rounds
   for every run; each cohort size without DP (the reference, with the same sampling) and with DP-FedAvg
   (adaptive clipping; the noise multiplier calibrated to epsilon 8 and 2 at delta 1e-5 over the planned rounds
   under the Poisson accountant). The noise on the mean is z C / (qN): it falls as more clients join a round.
2. **The audited epsilon**: the same jobs at 100 per round with 200 canary clients (``privacy.canaries``), then
   ``ffm audit --canaries``: the one-run lower bound beside the accountant's epsilon, for no DP and each epsilon.
3. **Membership inference where it works**: 50 clients of 20 images each trained 60 rounds of 8 local epochs
   (memorization), then LiRA (``ffm audit --shadows 4``) without DP and with DP at epsilon 8.

Runs are cached in runs/bench-privacy-scale/ (a rerun does only what is new). Writes
``bench/results/privacy_scale.md`` and ``privacy_scale.png``.

Launch:  .venv/bin/python bench/privacy_scale.py [--rounds 100] [--part utility,audit,mia]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from runs import FFM, REPO, run_cached

RESULTS = REPO / "bench" / "results"
WORK = REPO / "runs" / "bench-privacy-scale"
CONFIG = REPO / "configs" / "vit_mnist.yaml"
CLIENTS, DELTA = 1000, 1e-5


def base(rounds: int) -> list[str]:
    return [f"federation.num_clients={CLIENTS}", f"federation.rounds={rounds}", "federation.sampling=poisson",
            "federation.fraction_evaluate=0.0", "federation.evaluate_every=5", "data.test_fraction=0.2",
            "train.batch_size=4", "train.local_epochs=1", "train.scheduler=constant", "train.lr=0.003",
            "federation.workers=1", f"privacy.delta={DELTA}",
            "data.partitioner=shards", "data.shards_per_client=2"]


def noise_for(per_round: int, epsilon: float, rounds: int) -> float:
    """The noise multiplier whose Poisson epsilon after ``rounds`` is ``epsilon``."""
    from ffm.config import load_job
    from ffm.privacy.accounting import noise_for_epsilon

    job = load_job(CONFIG, [*base(rounds), f"federation.fraction_train={per_round / CLIENTS}",
                            "privacy.clipping=adaptive"])
    return noise_for_epsilon(job, epsilon, rounds)


def dp(per_round: int, epsilon: float | None, rounds: int) -> list[str]:
    keys = [f"federation.fraction_train={per_round / CLIENTS}"]
    if epsilon is None:
        return keys
    return [*keys, "privacy.clipping=adaptive", f"privacy.noise_multiplier={noise_for(per_round, epsilon, rounds):.4f}",
            "privacy.clipping_norm=1.0", "privacy.target_quantile=0.5"]


def utility(args: argparse.Namespace) -> dict[str, dict]:
    runs = {}
    for per_round in (100, 10, 1000):  # the goal's cohort first
        for epsilon in (None, 8.0, 2.0):
            name = f"u{per_round}-{'nodp' if epsilon is None else f'eps{epsilon:g}'}"
            runs[name] = run_cached(WORK, name, CONFIG, [*base(args.rounds), *dp(per_round, epsilon, args.rounds)],
                                    threads=2, report_only=args.report_only)
    return runs


def _audit(run_dir: Path, *extra: str) -> dict | None:
    if not (run_dir / "summary.json").is_file():
        return None
    record = json.loads((run_dir / "summary.json").read_text())
    key = "canary_audit" if "--canaries" in extra else "audit"
    if key not in record:
        subprocess.run([FFM, "audit", str(run_dir), *extra], check=True, capture_output=True, text=True)
        record = json.loads((run_dir / "summary.json").read_text())
    return record[key]


def audited(args: argparse.Namespace) -> dict[str, dict]:
    out = {}
    for epsilon in (None, 8.0, 2.0):
        name = f"a100-{'nodp' if epsilon is None else f'eps{epsilon:g}'}"
        result = run_cached(WORK, name, CONFIG, [*base(args.rounds), *dp(100, epsilon, args.rounds),
                                                 "privacy.canaries=200", "checkpoint.keep_last=0"],
                            threads=2, report_only=args.report_only)
        out[name] = {"run": result, "audit": None if "error" in result else _audit(WORK / name, "--canaries")}
    return out


def memorization(args: argparse.Namespace) -> dict[str, dict]:
    keys = ["federation.num_clients=50", "federation.rounds=60", "federation.fraction_evaluate=0.0",
            "federation.evaluate_every=10", "data.max_examples=1250", "data.test_fraction=0.2",
            "train.local_epochs=8", "train.batch_size=8", "federation.workers=1", f"privacy.delta={DELTA}", ]
    out = {}
    for name, extra in (("mia-nodp", []), ("mia-eps8", ["privacy.clipping=fixed", "privacy.target_epsilon=8",
                                                        "privacy.clipping_norm=1.0"])):
        result = run_cached(WORK, name, CONFIG, [*keys, *extra], threads=2, report_only=args.report_only)
        out[name] = {"run": result,
                     "audit": None if "error" in result else _audit(WORK / name, "--examples", "200", "--shadows", "4")}
    return out


def _acc(result: dict) -> str:
    return "not run" if "error" in result else f"{result['summary']['final_test_accuracy']:.4f}"


def _eps(result: dict) -> str:
    if "error" in result or not result["summary"].get("privacy"):
        return "inf"
    return f"{result['summary']['privacy']['epsilon']:.2f}"


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_eps, by_round) = plt.subplots(1, 2, figsize=(12, 4.5))
    for per_round in (10, 100, 1000):
        points = []
        for label, eps in (("eps2", 2.0), ("eps8", 8.0), ("nodp", 30.0)):
            result = runs.get(f"u{per_round}-{label}", {"error": ""})
            if "error" not in result:
                points.append((eps, result["summary"]["final_test_accuracy"]))
        if points:
            by_eps.plot([p[0] for p in points], [p[1] for p in points], "-o", label=f"{per_round} per round")
    by_eps.set_xscale("log")
    by_eps.set_xticks([2, 8, 30], ["2", "8", "no DP"])
    by_eps.set_xlabel("epsilon (delta 1e-5)")
    by_eps.set_ylabel("test accuracy")
    by_eps.legend()
    by_eps.grid(alpha=0.3)
    for name, result in runs.items():
        if "error" in result:
            continue
        lines = [ln for ln in result["lines"] if "test_accuracy" in ln]
        by_round.plot([ln["round"] for ln in lines], [ln["test_accuracy"] for ln in lines], label=name)
    by_round.set_xlabel("round")
    by_round.set_ylabel("test accuracy")
    by_round.legend(fontsize=7)
    by_round.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--part", default="utility,audit,mia")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts = set(args.part.split(","))
    runs = utility(args) if "utility" in parts else {}
    audits = audited(args) if "audit" in parts else {}
    mia = memorization(args) if "mia" in parts else {}
    plot(runs, RESULTS / "privacy_scale.png")
    lines = ["# User-level DP at scale, and an audited epsilon", "",
             f"`.venv/bin/python bench/privacy_scale.py --rounds {args.rounds}` ({time.perf_counter() - started:.0f} s "
             "for what was not cached). A ViT from scratch (configs/vit_mnist.yaml: 2 layers, width 64) on the 5,000 "
             f"MNIST images; {CLIENTS} clients (two label-sorted shards each, McMahan et al.'s split: "
             "4 training images, at most 2 digits), "
             "Poisson-sampled each round; every run the same rounds; DP-FedAvg with adaptive clipping (target "
             "quantile 0.5), the noise multiplier calibrated to the epsilon over the planned rounds under the Poisson "
             "accountant (delta 1e-5). One seed.", "",
             "## Accuracy against epsilon and clients per round", "",
             "| clients per round (expected) | no DP | epsilon 8 | epsilon 2 |", "| ---: | ---: | ---: | ---: |"]
    for per_round in (10, 100, 1000):
        cells = [f"{_acc(runs[f'u{per_round}-{k}'])} (eps {_eps(runs[f'u{per_round}-{k}'])})"
                 if f"u{per_round}-{k}" in runs else "not run" for k in ("nodp", "eps8", "eps2")]
        lines.append(f"| {per_round} | " + " | ".join(cells) + " |")
    if "u100-nodp" in runs and "error" not in runs["u100-nodp"] and "error" not in runs.get("u100-eps8", {"error": 1}):
        gap = 100 * (runs["u100-nodp"]["summary"]["final_test_accuracy"] -
                     runs["u100-eps8"]["summary"]["final_test_accuracy"])
        lines += ["", f"Goal (1,000 clients, 100 per round: DP at epsilon <= 8 within 5 points of no DP): "
                  f"**{'met' if gap <= 5 else 'not met'}** ({gap:+.1f} points below)."]
    lines += ["", "## The audited epsilon (100 per round, 200 canary clients)", "",
              "| run | canaries present | right guesses | epsilon lower bound (95%) | accountant's epsilon |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, found in audits.items():
        a = found["audit"]
        if not a:
            lines.append(f"| {name} | not run | | | |")
            continue
        accountant = a["epsilon_accountant"] if a["epsilon_accountant"] is not None else "inf"
        lines.append(f"| {name} | {a['present']} | {a['correct']} of {a['guesses']} | "
                     f"{a['epsilon_lower_bound']:.3f} | {accountant} |")
    lines += ["", "## Membership inference where it works (50 clients x 20 images, 60 rounds x 8 local epochs)", "",
              "| run | test accuracy | epsilon | loss-attack AUC | LiRA AUC |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, found in mia.items():
        a = found["audit"]
        attacks = f"{a['loss_attack']['auc']:.3f} | {a['lira']['auc']:.3f}" if a else "not run | not run"
        lines.append(f"| {name} | {_acc(found['run'])} | {_eps(found['run'])} | {attacks} |")
    lines += ["", "![accuracy against epsilon, and per round](privacy_scale.png)", ""]
    (RESULTS / "privacy_scale.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
