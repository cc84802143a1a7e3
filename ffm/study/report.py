"""REPORT.md and its plots, from the study's rows (results.csv) and the chosen runs' per-round metrics."""

from __future__ import annotations

import json
import platform
import statistics
from importlib import metadata
from pathlib import Path
from typing import Any

from ffm.budget import time_to_target
from ffm.study.results import choose, chosen_rows, paired_difference

__all__ = ["headline", "to_target", "write_report"]

PACKAGES = ("torch", "transformers", "peft", "flwr", "flwr-datasets", "datasets", "opacus")
MEASURES = [  # (column, header); every measure is of the mode's chosen grid point, over seeds
    ("final_test", "test {m}"), ("val", "val {m} (chooses)"), ("overfit_gap", "train - test"),
    ("unseen", "unseen parties {m}"), ("party_worst10", "worst 10% parties"), ("party_std", "party spread (std)"),
    ("mia_auc", "MIA AUC"), ("mia_tpr_1pct", "MIA TPR at 1% FPR"),
    ("mb_up", "MB up"), ("mb_down", "MB down"), ("wall_s", "wall s"),
    ("peak_rss_mb", "peak MB"),
]


def _stat(values: list[float | None], digits: int = 4) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "not measured"
    if len(got) == 1:
        return f"{got[0]:.{digits}f}"
    return f"{statistics.fmean(got):.{digits}f} ± {statistics.stdev(got):.{digits}f}"


def _by_condition(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["condition"], []).append(row)
    return groups


def headline(rows: list[dict[str, Any]]) -> str:
    """Per condition: each mode's chosen value and every measure (mean ± std over seeds); then the paired
    differences of the test metric."""
    chosen = choose(rows)
    picked = chosen_rows(rows)
    metric = next((r["metric"] for r in rows if r["metric"]), "metric")
    out = []
    for condition, group in _by_condition(picked).items():
        title = condition.replace(";", ", ") or "the job as configured"
        heads = ["mode", "chosen", *(h.format(m=metric) for _, h in MEASURES)]
        out += [f"### {title}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        modes = list(dict.fromkeys(r["mode"] for r in group))
        for mode in modes:
            runs = [r for r in group if r["mode"] == mode]
            digits = {"mb_up": 2, "mb_down": 2, "wall_s": 0, "peak_rss_mb": 0}
            cells = [_stat([r[c] for r in runs], digits.get(c, 4)) for c, _ in MEASURES]
            out.append(f"| {mode} | {chosen[(condition, mode)] or '-'} | " + " | ".join(cells) + " |")
        out.append("")
        pairs = [(a, b) for a, b in (("federated", "centralized"), ("federated", "local")) if {a, b} <= set(modes)]
        if pairs:
            out += [f"Paired difference of the test {metric} (same seeds), mean and 95% t-interval:", "",
                    "| difference | mean | 95% interval | seeds |", "|---|---:|---|---:|"]
            for a, b in pairs:
                mean, lo, hi, n = paired_difference(*(_per_seed(group, m) for m in (a, b)))
                interval = "n/a (one seed)" if lo is None else f"[{lo:+.4f}, {hi:+.4f}]"
                out.append(f"| {a} - {b} | {mean:+.4f} | {interval} | {n} |")
            out.append("")
    return "\n".join(out)


def _per_seed(rows: list[dict[str, Any]], mode: str) -> dict[int, float]:
    return {r["seed"]: r["final_test"] for r in rows if r["mode"] == mode and r["final_test"] is not None}


def _summary_text(rows: list[dict[str, Any]]) -> str:
    """A neutral paragraph per condition: what the numbers show, including where federated loses."""
    picked = chosen_rows(rows)
    lines = []
    for condition, group in _by_condition(picked).items():
        mean = {m: statistics.fmean(v) for m in ("federated", "centralized", "local")
                if (v := list(_per_seed(group, m).values()))}
        metric = group[0]["metric"]
        higher = bool(group[0]["higher_is_better"])
        said = [f"**{condition.replace(';', ', ') or 'As configured'}.**"]
        for other in ("centralized", "local"):
            if "federated" in mean and other in mean:
                d, lo, hi, _ = paired_difference(_per_seed(group, "federated"), _per_seed(group, other))
                better = (d > 0) == higher
                sure = "" if lo is None else (" (the 95% interval includes 0: not resolved with these seeds)"
                                              if lo <= 0 <= hi else "")
                verb = "ties with" if d == 0 else "beats" if better else "loses to"
                said.append(f"Federated {verb} {other} on test {metric}: "
                            f"{mean['federated']:.4f} vs {mean[other]:.4f} ({d:+.4f}){sure}.")
        for column, what in (("overfit_gap", "train - test gap"), ("unseen", f"{metric} on unseen parties"),
                             ("party_worst10", f"{metric} of the worst 10% of parties")):
            values = {m: statistics.fmean(x) for m in mean
                      if (x := [r[column] for r in group if r["mode"] == m and r[column] is not None])}
            if values:
                said.append(f"{what[0].upper() + what[1:]}: " + ", ".join(f"{m} {v:.4f}" for m, v in values.items())
                            + ".")
        cost = {m: statistics.fmean(r["mb_up"] + r["mb_down"] for r in group if r["mode"] == m) for m in mean}
        said.append("Traffic (MB up + down): " + ", ".join(f"{m} {v:.2f}" for m, v in cost.items()) + ".")
        if all(r["mia_auc"] is None for r in group):
            said.append("Membership inference was not measured (--audit-examples 0), so this study makes no "
                        "privacy claim beyond where the data stayed.")
        else:
            auc = {m: statistics.fmean(x) for m in mean
                   if (x := [r["mia_auc"] for r in group if r["mode"] == m and r["mia_auc"] is not None])}
            said.append("Membership-inference AUC (0.5 = members indistinguishable): "
                        + ", ".join(f"{m} {v:.3f}" for m, v in auc.items()) + ".")
        lines.append(" ".join(said))
    return "\n\n".join(lines)


def _best_val(lines: list[dict[str, Any]], metric: str, higher: bool) -> float | None:
    values = [line["val"][f"val_{metric}"] for line in lines if f"val_{metric}" in line.get("val", {})]
    return (max(values) if higher else min(values)) if values else None


def to_target(rows: list[dict[str, Any]], fractions: tuple[float, ...] = (0.95, 0.99)) -> str:
    """What each mode took to reach fractions of the centralized run's best validation metric (same seed):
    rounds, MB (up + down) and seconds, mean over the seeds that reached it. Local-only is left out: its
    validation metric is each party's model on that party's own split (its own label mix), which a model that
    learned only its party's majority labels scores high on; it is not the centralized run's measure."""
    out = []
    for condition, group in _by_condition(chosen_rows(rows)).items():
        metric, higher = group[0]["metric"], bool(group[0]["higher_is_better"])
        targets = {r["seed"]: _best_val(_curves(r), metric, higher) for r in group if r["mode"] == "centralized"}
        if not any(v is not None for v in targets.values()):
            continue
        out += [f"### {condition.replace(';', ', ') or 'the job as configured'}", "",
                f"Target: the centralized run's best validation {metric} of the same seed "
                f"({', '.join(f'{v:.4f}' for v in targets.values() if v is not None)}).", "",
                "| mode | fraction of the target | seeds that reached it | rounds | MB up + down | seconds |",
                "|---|---:|---:|---:|---:|---:|"]
        for mode in dict.fromkeys(r["mode"] for r in group if r["mode"] != "local"):
            runs = [r for r in group if r["mode"] == mode and targets.get(r["seed"]) is not None]
            for fraction in fractions:
                costs = [time_to_target(_curves(r), metric, higher, targets[r["seed"]], [fraction])[f"{fraction:g}"]
                         for r in runs]
                got = [c for c in costs if c is not None]
                mean = (lambda k, got=got: statistics.fmean(c[k] for c in got) if got else None)  # noqa: E731
                cells = ["-" if mean(k) is None else f"{mean(k) / scale:,.{d}f}"
                         for k, scale, d in (("round", 1, 1), ("bytes", 1e6, 1), ("seconds", 1, 0))]
                out.append(f"| {mode} | {fraction:g} | {len(got)}/{len(runs)} | " + " | ".join(cells) + " |")
        if any(r["mode"] == "local" for r in group):
            out.append("Local-only is not in this table: its validation metric is each party's own model on its "
                       "own split, not comparable with the centralized target.")
        out.append("")
    return "\n".join(out) or "No run measured a validation metric per round (federation.fraction_evaluate=0)."


def _curves(row: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(row["run_dir"]) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def _loss_gap(line: dict[str, Any]) -> float | None:
    """test loss - the clients' example-weighted training loss of the round (training-time overfitting)."""
    clients = [c for c in line.get("clients", []) if "train_loss" in c]
    if not clients or "test_loss" not in line:
        return None
    total = sum(c.get("num_examples", 1) for c in clients)
    return line["test_loss"] - sum(c["train_loss"] * c.get("num_examples", 1) for c in clients) / total


def plot(rows: list[dict[str, Any]], study_dir: Path) -> list[str]:
    """Write the study's PNGs; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    picked = chosen_rows(rows)
    groups = _by_condition(picked)
    if not groups:
        return []
    metric = picked[0]["metric"]
    names = []
    for file, key, ylabel in (("accuracy_per_round.png", f"test_{metric}", f"test {metric}"),
                              ("overfitting_gap.png", None, "test loss - training loss")):
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
        for ax, (condition, group) in zip(axes[0], groups.items(), strict=True):
            for mode in dict.fromkeys(r["mode"] for r in group):
                series: dict[int, list[float]] = {}
                for row in (r for r in group if r["mode"] == mode):
                    for line in _curves(row):
                        value = line.get(key) if key else (_loss_gap(line) if line["round"] > 0 else None)
                        if value is not None:
                            series.setdefault(line["round"], []).append(value)
                xs = sorted(series)
                ys = [statistics.fmean(series[x]) for x in xs]
                sd = [statistics.pstdev(series[x]) for x in xs]
                ax.plot(xs, ys, "-o", ms=3, label=mode)
                ax.fill_between(xs, [y - s for y, s in zip(ys, sd, strict=True)],
                                [y + s for y, s in zip(ys, sd, strict=True)], alpha=0.15)
            ax.set_title(condition.replace(";", ", ") or "as configured")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("round")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(study_dir / file, dpi=110)
        plt.close(fig)
        names.append(file)
    for file, cost, xlabel in (("metric_vs_bytes.png", "bytes", "MB sent (up + down), cumulative"),
                               ("metric_vs_time.png", "seconds", "wall seconds, cumulative")):
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
        for ax, (condition, group) in zip(axes[0], groups.items(), strict=True):
            for mode in dict.fromkeys(r["mode"] for r in group):
                xs, ys = _cost_curve([r for r in group if r["mode"] == mode], f"test_{metric}", cost)
                ax.plot(xs, ys, "-o", ms=3, label=mode)
            ax.set_title(condition.replace(";", ", ") or "as configured")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"test {metric} (mean over seeds)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(study_dir / file, dpi=110)
        plt.close(fig)
        names.append(file)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, (condition, group) in zip(axes[0], groups.items(), strict=True):
        modes = list(dict.fromkeys(r["mode"] for r in group))
        data = []
        for mode in modes:
            values = []
            for row in (r for r in group if r["mode"] == mode):
                summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
                values += list(((summary.get("parties") or {}).get(f"party_val_{metric}") or {}).values())
            data.append(values)
        ax.boxplot(data, tick_labels=modes)
        ax.set_title(condition.replace(";", ", ") or "as configured")
        ax.set_ylabel(f"{metric} on each party's validation split")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(study_dir / "party_accuracy.png", dpi=110)
    plt.close(fig)
    names.append("party_accuracy.png")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        done = [r for r in rows if r["mode"] == mode and r["final_test"] is not None]
        ax.scatter([r["mb_up"] + r["mb_down"] for r in done], [r["final_test"] for r in done], label=mode, s=18)
    ax.set_xlabel("MB sent (up + down), every run")
    ax.set_ylabel(f"final test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(study_dir / "accuracy_vs_bytes.png", dpi=110)
    plt.close(fig)
    names.append("accuracy_vs_bytes.png")
    return names


def _cost_curve(runs: list[dict[str, Any]], key: str, cost: str) -> tuple[list[float], list[float]]:
    """Mean over ``runs`` (seeds) of the cumulative cost (MB or seconds) and of ``key`` at each round they have."""
    at: dict[int, tuple[list[float], list[float]]] = {}
    for row in runs:
        spent = 0.0
        for line in _curves(row):
            spent += ((line.get("bytes_up", 0) + line.get("bytes_down", 0)) / 1e6 if cost == "bytes"
                      else line.get("wall_time_s", 0.0))
            if key in line:
                xs, ys = at.setdefault(line["round"], ([], []))
                xs.append(spent)
                ys.append(line[key])
    rounds = sorted(at)
    return [statistics.fmean(at[r][0]) for r in rounds], [statistics.fmean(at[r][1]) for r in rounds]


def _budget_text(config: str) -> str:
    """How long the study's runs trained: every mode under the same maximum, stopped the same way."""
    import yaml

    try:
        raw = yaml.safe_load(config)
    except yaml.YAMLError:
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    rounds = (raw.get("federation") or {}).get("rounds")
    patience = (raw.get("budget") or {}).get("patience", 0)
    if not patience:
        return f"Every run trains its {rounds} rounds."
    return (f"Every run trains at most {rounds} rounds and stops once its validation metric has not improved for "
            f"{patience} rounds (budget.patience): each mode ends at its own plateau under the same maximum.")


def _versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _all_runs(rows: list[dict[str, Any]]) -> str:
    heads = ["run", "status", "val", "test", "train - test", "unseen", "worst 10%", "MB up", "wall s", "peak MB"]
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    fmt = lambda v, d=4: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in rows:
        out.append(f"| {r['name']} | {r['status']} | {fmt(r['val'])} | {fmt(r['final_test'])} | "
                   f"{fmt(r['overfit_gap'])} | {fmt(r['unseen'])} | {fmt(r['party_worst10'])} | "
                   f"{fmt(r['mb_up'], 2)} | {fmt(r['wall_s'], 0)} | {fmt(r['peak_rss_mb'], 0)} |")
    return "\n".join(out)


def write_report(rows: list[dict[str, Any]], study_dir: Path, command: str, plan_text: str) -> Path:
    """REPORT.md (and the PNGs) in ``study_dir``."""
    pictures = plot(rows, study_dir)
    first = next((Path(r["run_dir"]) / "config.yaml" for r in rows if (Path(r["run_dir"]) / "config.yaml").is_file()),
                 None)
    config = first.read_text() if first else "(no run wrote its config)"
    failed = [r["name"] for r in rows if r["status"] != "done"]
    text = f"""# Federated vs centralized vs local: study report

`{command}`

{plan_text}

Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}; {_versions()}.

**Fairness.** Every mode gets the same budget of local steps per round (centralized takes a round's federation
steps in one trajectory). {_budget_text(config)}
Each mode's grid point is chosen by its mean *validation* {rows[0]['metric'] if rows else ''} over seeds, measured
the same way in every mode: each party's own validation split (for local-only, each party's own model), never
the test set. Seeds vary the split, the partition and the initialization.
{f"**Failed runs** (left out of the tables): {', '.join(failed)}." if failed else ""}

## Headline (each mode at its chosen grid point; mean ± std over seeds)

{headline(rows)}

## What the numbers show

{_summary_text(rows)}

## What reaching the centralized level took

{to_target(rows)}

## Plots

{chr(10).join(f"![{p}]({p})" for p in pictures)}

## Every run

{_all_runs(rows)}

## Config (first run; the others differ only in mode, seed and the study's keys)

```yaml
{config.rstrip()}
```
"""
    path = study_dir / "REPORT.md"
    path.write_text(text)
    return path
