"""Benchmark, run by hand (not a test): what privacy costs and what it buys, on AG News with MiniLM + LoRA.

1. Accuracy vs epsilon: client-level DP-FedAvg (fixed clipping at the server, several noise multipliers z)
   and sample-level DP-SGD, against the non-private FedAvg of the same budget (bench/strategies.py's
   ``a0.5-fedavg``: pass the same --work to reuse it).
2. Membership inference (``ffm audit``: loss attack and offline LiRA) on the centralized, local-only,
   federated and federated+DP models of the same job.
3. Secure aggregation's cost: one round with 10, 50 and 100 clients, plain FedAvg vs SecAgg (every client
   a neighbour of every other) vs SecAgg+ (8 neighbours); seconds of the round and bytes. These rounds are
   short (2 local steps) so the protocol's share of the round is, if anything, over-stated.

Runs are cached in --work. Writes ``bench/results/privacy.md`` and ``privacy.png``.

Launch:  .venv/bin/python bench/privacy.py [--work /tmp/stratbench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from runs import REPO, acc, budget, budget_parser, run_cached

DEMO = REPO / "configs" / "demo.yaml"
DP = ["privacy.clipping=fixed", "privacy.side=server", "privacy.clipping_norm=0.5"]
ACCURACY_RUNS = {  # name -> (label, overrides besides the shared budget)
    "a0.5-fedavg": ("no DP (FedAvg)", []),
    "privacy-dp-z0.5": ("DP-FedAvg z=0.5", [*DP, "privacy.noise_multiplier=0.5"]),
    "privacy-dp-z1": ("DP-FedAvg z=1", [*DP, "privacy.noise_multiplier=1.0"]),
    "privacy-dp-z2": ("DP-FedAvg z=2", [*DP, "privacy.noise_multiplier=2.0"]),
    "privacy-dpsgd-z1": ("DP-SGD z=1 (per client)", ["privacy.dp_sgd=true", "privacy.sgd_noise_multiplier=1.0"]),
}
MIA_RUNS = {
    "privacy-centralized": ("centralized", ["mode=centralized"]),
    "privacy-local": ("local-only", ["mode=local"]),
    "a0.5-fedavg": ("federated", []),
    "privacy-dp-z1": ("federated + DP (z=1)", [*DP, "privacy.noise_multiplier=1.0"]),
}


SEC_HEAD = ("| clients | aggregation | round s | vs FedAvg | protocol s (server side) | MB up | MB down "
            "| protocol MB (keys, shares) |\n|---:|---|---:|---:|---:|---:|---:|---:|")


def shared(args: argparse.Namespace) -> list[str]:
    """bench/strategies.py's budget at alpha 0.5."""
    return [*budget(args), "data.alpha=0.5", "strategy.name=fedavg"]


def epsilon(result: dict) -> str:
    if "error" in result:
        return "-"
    s = result.get("summary", {})
    if s.get("privacy"):
        return f"{s['privacy']['epsilon']:.2f} (client level)"
    if s.get("dp_sgd"):
        return f"{s['dp_sgd']['epsilon_max']:.2f} (sample level, worst client)"
    return "inf"


def audit(work: Path, name: str, args: argparse.Namespace) -> dict:
    path = work / name / "audit.json"
    if not path.is_file():
        subprocess.call([str(REPO / ".venv" / "bin" / "ffm"), "audit", str(work / name), "--examples",
                         str(args.audit_examples), "--shadows", str(args.shadows), "--shadow-steps",
                         str(args.shadow_steps)])
    return json.loads(path.read_text())


def secagg_runs(args: argparse.Namespace) -> dict[str, tuple[int, str, list[str]]]:
    runs = {}
    for n in args.clients:
        base = ["data.source=ag_news", "data.max_examples=3000", "data.test_fraction=0.05", "data.partitioner=iid",
                f"federation.num_clients={n}", "federation.rounds=1", "federation.fraction_evaluate=0",
                "train.local_steps=2", "progress=false"]
        runs[f"secagg-n{n}-plain"] = (n, "FedAvg", base)
        runs[f"secagg-n{n}-full"] = (n, "SecAgg (all neighbours)", [*base, "privacy.secure_aggregation=true"])
        runs[f"secagg-n{n}-k8"] = (n, "SecAgg+ (8 neighbours)", [*base, "privacy.secure_aggregation=true",
                                                                 "privacy.secagg_neighbours=8"])
    return runs


def plot(points: list[tuple[str, float, float]], secagg: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, eps, accuracy in points:
        x = eps if eps != float("inf") else max([e for _, e, _ in points if e != float("inf")] + [1.0]) * 3
        left.scatter(x, accuracy)
        left.annotate(label, (x, accuracy), fontsize=8, xytext=(4, 3), textcoords="offset points")
    left.set_xscale("log")
    left.set_xlabel("epsilon at delta 1e-5 (no DP drawn at the right edge)")
    left.set_ylabel("final test accuracy")
    left.grid(alpha=0.3)
    for variant in ("FedAvg", "SecAgg (all neighbours)", "SecAgg+ (8 neighbours)"):
        rows = sorted((v["n"], v["seconds"]) for v in secagg.values() if v["variant"] == variant)
        right.plot([r[0] for r in rows], [r[1] for r in rows], "-o", label=variant)
    right.set_xlabel("clients in the round")
    right.set_ylabel("round wall time, s")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = budget_parser(__doc__.splitlines()[0], "privacy.md")
    parser.add_argument("--audit-examples", type=int, default=200)
    parser.add_argument("--shadows", type=int, default=2)
    parser.add_argument("--shadow-steps", type=int, default=80)
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 50, 100])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs = {**ACCURACY_RUNS, **MIA_RUNS}
    results = {name: run_cached(args.work, name, DEMO, [*shared(args), *runs[name][1]], report_only=args.report_only)
               for name in runs}
    points = []
    rows = []
    for name, (label, _) in ACCURACY_RUNS.items():
        res = results[name]
        eps = res.get("summary", {}).get("privacy") or res.get("summary", {}).get("dp_sgd")
        value = float("inf") if not eps else eps.get("epsilon", eps.get("epsilon_max"))
        if "error" not in res:
            points.append((label, value, res["summary"]["final_test_accuracy"]))
        rows.append(f"| {label} | {acc(res)} | {epsilon(res)} |")
    mia = []
    for name, (label, _) in MIA_RUNS.items():
        if "error" in results[name] or (args.report_only and not (args.work / name / "audit.json").is_file()):
            mia.append(f"| {label} | {acc(results[name])} | not measured | | | |")
            continue
        a = audit(args.work, name, args)
        lira = a["lira"] or {}
        mia.append(f"| {label} | {acc(results[name])} | {a['loss_attack']['auc']:.3f} | "
                   f"{a['loss_attack']['tpr_at_1pct_fpr']:.3f} | {lira.get('auc', float('nan')):.3f} | "
                   f"{lira.get('tpr_at_1pct_fpr', float('nan')):.3f} |")
    secagg = {}
    for name, (n, variant, overrides) in secagg_runs(args).items():
        res = run_cached(args.work, name, DEMO, overrides, report_only=args.report_only)
        if "error" in res:
            continue
        line = next(x for x in res["lines"] if x["round"] == 1)
        costs = (res["summary"].get("secure_aggregation") or {}).get("rounds", {}).get("1", {})
        secagg[name] = {"n": n, "variant": variant, "seconds": line["wall_time_s"],
                        "protocol_s": costs.get("seconds", 0.0), "protocol_mb": costs.get("bytes", 0.0) / 1e6,
                        "up_mb": line["bytes_up"] / 1e6, "down_mb": line["bytes_down"] / 1e6}
    plot(points, secagg, args.out.with_suffix(".png"))
    sec_rows = []
    for n in args.clients:
        plain = secagg.get(f"secagg-n{n}-plain")
        for key in ("plain", "full", "k8"):
            v = secagg.get(f"secagg-n{n}-{key}")
            if v is None:
                continue
            ratio = v["seconds"] / plain["seconds"] if plain else float("nan")  # same n, same run of the bench
            sec_rows.append(f"| {n} | {v['variant']} | {v['seconds']:.1f} | {ratio:.2f} | {v['protocol_s']:.1f} | "
                            f"{v['up_mb']:.2f} | {v['down_mb']:.2f} | {v['protocol_mb']:.2f} |")
    nl = "\n"
    text = f"""# Privacy: accuracy vs epsilon, membership inference, secure aggregation's cost

`{' '.join(['.venv/bin/python', 'bench/privacy.py', *sys.argv[1:]])}` — {time.strftime('%Y-%m-%d')},
{time.perf_counter() - started:.0f} s for what was not cached (runs in `{args.work}`).

Budget of sections 1 and 2: MiniLM + LoRA (r=8), AG News subset of {args.max_examples} articles, 10
Dirichlet(0.5) clients all training every round, FedAvg, {args.rounds} rounds x {args.local_steps} local steps,
seed {args.seed}. DP-FedAvg clips each update to L2 0.5 at the server and adds noise z x 0.5 to the sum
(Opacus RDP accounting, delta 1e-5); DP-SGD clips each example's gradient to 1 and adds noise z x 1 per step.
One seed.

## 1. Accuracy vs epsilon

| run | final test accuracy | epsilon |
|---|---:|---|
{nl.join(rows)}

## 2. Membership inference

{args.audit_examples} members vs as many non-members; LiRA with {args.shadows} shadows of {args.shadow_steps} steps.

| model | test accuracy | loss attack AUC | loss TPR at 1% FPR | LiRA AUC | LiRA TPR at 1% FPR |
|---|---:|---:|---:|---:|---:|
{nl.join(mia)}

## 3. Secure aggregation: one round, AG News (3000 articles, IID), 2 local steps per client

{SEC_HEAD}
{nl.join(sec_rows)}

A round's seconds include every client's training (one process, clients one after another) and the
server's evaluation; "protocol s" is the server's share of the SecAgg stages. Masked updates are 64-bit
integers, so bytes up double against FedAvg's float32.

![privacy]({args.out.with_suffix('.png').name})
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
