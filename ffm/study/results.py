"""One row per run (results.csv), the choice of each mode's grid point, and paired differences across seeds.

The report is built from these rows alone, so ``results.csv`` read back gives the same tables.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from ffm.study.plan import StudyRun, pairs_text

__all__ = ["COLUMNS", "choose", "chosen_rows", "load_results", "paired_difference", "row_of", "save_results"]

COLUMNS = [
    "name", "condition", "mode", "seed", "grid", "status", "metric", "higher_is_better", "final_test", "best_test",
    "val", "val_loss", "train", "overfit_gap", "unseen", "party_worst10", "party_mean", "party_std", "party_min",
    "rounds", "mb_up", "mb_down", "wall_s", "peak_rss_mb", "mia_auc", "mia_tpr_1pct", "run_dir",
]
_TEXT = {"name", "condition", "mode", "grid", "status", "metric", "run_dir"}
_INT = {"seed", "rounds", "higher_is_better"}


def _worst_share(values: list[float], higher_is_better: bool, share: float = 0.1) -> float:
    """Mean of the worst ``share`` of the parties (at least one)."""
    ordered = sorted(values, reverse=not higher_is_better)
    count = max(1, math.ceil(share * len(ordered)))
    return sum(ordered[:count]) / count


def row_of(run: StudyRun, record: dict, run_dir: Path) -> dict[str, Any]:
    """The row of one run: its record, summary and per-party figures (a failed run keeps its keys, empty)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    status = ("done" if record.get("exit") == 0 else "not run" if record.get("not_run")
              else f"failed (exit {record.get('exit')})")
    row.update(name=run.name, condition=pairs_text(run.condition), mode=run.mode, seed=run.seed,
               grid=pairs_text(run.grid),
               run_dir=str(run_dir), status=status)
    if record.get("exit") != 0 or not (run_dir / "summary.json").is_file():
        return row
    summary = json.loads((run_dir / "summary.json").read_text())
    metric = summary["primary_metric"]
    higher = summary.get("higher_is_better", True)
    parties = summary.get("parties") or {}
    per_party = list((parties.get(f"party_val_{metric}") or {}).values())
    row.update(
        metric=metric, higher_is_better=int(higher), final_test=summary[f"final_test_{metric}"],
        best_test=summary[f"best_test_{metric}"], val=parties.get(f"val_{metric}"),
        val_loss=parties.get("val_loss"),
        train=parties.get(f"train_{metric}"), overfit_gap=summary.get("overfit_gap"),
        unseen=parties.get(f"unseen_{metric}"), rounds=summary["rounds"],
        mb_up=summary["bytes_up"] / 1e6, mb_down=summary["bytes_down"] / 1e6,
        wall_s=record.get("wall_s"), peak_rss_mb=record.get("peak_rss_mb"),
        mia_auc=(summary.get("audit") or {}).get("mia_auc"),
        mia_tpr_1pct=(summary.get("audit") or {}).get("tpr_at_1pct_fpr"),
    )
    if per_party:
        row.update(party_worst10=_worst_share(per_party, higher), party_mean=statistics.fmean(per_party),
                   party_std=statistics.pstdev(per_party), party_min=min(per_party) if higher else max(per_party))
    return row


def save_results(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the study's rows as results.csv (one row per run)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})


def load_results(path: Path) -> list[dict[str, Any]]:
    """results.csv back into rows with the types they were written with."""
    rows = []
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key in COLUMNS:
                text = raw.get(key, "")
                if key in _TEXT:
                    row[key] = text
                elif text == "":
                    row[key] = None
                else:
                    row[key] = int(text) if key in _INT else float(text)
            rows.append(row)
    return rows


def _done(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "done"]


def choose(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(condition, mode) -> the grid point with the best mean VALIDATION metric over seeds (the test set
    chooses nothing). Points are compared on the seeds every point ran (with --tune-seeds, the tuning seeds; the
    chosen point's later seeds do not move the choice). A grid point that failed for any seed is not chosen.

    Points that tie on the metric (accuracy on a few dozen validation examples ties often) are told apart by
    the lower mean validation loss, where every tied point has one; only then by the grid's text, so that the
    choice is still the same on every machine."""
    chosen: dict[tuple[str, str], str] = {}
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        groups.setdefault((row["condition"], row["mode"]), {}).setdefault(row["grid"], []).append(row)
    for key, points in groups.items():
        common = set.intersection(*({r["seed"] for r in runs} for runs in points.values()))
        candidates = []
        for grid, all_runs in points.items():
            runs = [r for r in all_runs if r["seed"] in common]
            if runs and all(r["status"] == "done" and r["val"] is not None for r in runs):
                higher = bool(runs[0]["higher_is_better"])
                score = statistics.fmean(r["val"] for r in runs)
                losses = [r.get("val_loss") for r in runs]
                loss = statistics.fmean(losses) if None not in losses else None
                candidates.append((score if higher else -score, loss, grid))
        if candidates:
            best = max(c[0] for c in candidates)
            tied = [c for c in candidates if c[0] == best]
            if all(c[1] is not None for c in tied):
                tied = [c for c in tied if c[1] == min(c[1] for c in tied)]
            chosen[key] = max(c[2] for c in tied)
    return chosen


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float | None, float | None, int]:
    """Mean of a - b over the seeds both have, with a 95% t-interval (None for fewer than 2 seeds)."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if not diffs:
        return math.nan, None, None, 0
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, None, None, len(diffs)
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half, len(diffs)


def chosen_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The done rows at each (condition, mode)'s chosen grid point."""
    chosen = choose(rows)
    return [r for r in _done(rows) if chosen.get((r["condition"], r["mode"])) == r["grid"]]
