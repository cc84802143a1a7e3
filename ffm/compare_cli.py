"""``ffm compare CONFIG [key=value ...] [--seeds 3] [--modes ...] [--grid KEY=V1,V2] [--vary KEY=V1,V2]``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ffm.errors import ConfigError
from ffm.modes import Mode

if TYPE_CHECKING:
    from ffm.study import StudyPlan

__all__ = ["add_compare_parser", "compare_main"]


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``ffm compare`` and its options to the CLI's sub-commands."""
    compare = sub.add_parser(
        "compare",
        help="federated vs centralized vs local: one job over seeds and a grid, with REPORT.md and plots",
        description="Run one job in every mode over seeds and a tuning grid (chosen on validation data only), "
        "then write REPORT.md, results.csv and PNG plots into the study directory. Re-running resumes.",
    )
    compare.add_argument("config", help="YAML job file")
    compare.add_argument("overrides", nargs="*", help="dotted overrides shared by every run")
    compare.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (split, partition, init); default 3")
    compare.add_argument("--modes", default=",".join(Mode.training()),
                         help=f"comma-separated, default {','.join(Mode.training())}")
    compare.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                         help="tuned per mode on validation data, e.g. train.lr=1e-4,5e-4,1e-3 (repeatable)")
    compare.add_argument("--tune-seeds", type=int, default=0, metavar="K",
                         help="run the grid on the first K seeds only, then the other seeds at each mode's chosen "
                         "point (0 = the grid on every seed)")
    compare.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                         help="conditions reported apart, e.g. data.alpha=0.5,0.1 (repeatable)")
    compare.add_argument("--study-dir", help="default runs/study-<config name>")
    compare.add_argument("--workers", type=int, default=1, help="runs at once (default 1; peak memory adds up)")
    compare.add_argument("--audit-examples", type=int, default=200,
                         help="membership-inference audit of every run on this many members (0 = none)")
    compare.add_argument("--audit-shadows", type=int, default=0, help="LiRA shadow models per audit (0 = loss attack)")
    compare.add_argument("--report-only", action="store_true", help="rewrite the report from the runs done; run none")


def _check_same_study(study_dir: Path, recorded: dict) -> None:
    """A study directory holds one study: reusing its runs under other shared settings would mix them."""
    path = study_dir / "study.json"
    if path.is_file():
        before = json.loads(path.read_text())
        differing = [k for k in ("config", "overrides") if before.get(k) != recorded[k]]
        if differing:
            raise ConfigError(
                f"study dir '{study_dir}' holds a study with other {' and '.join(differing)} "
                f"({', '.join(f'{k}={before.get(k)}' for k in differing)}); choose another --study-dir"
            )


def _check_each_condition(plan: StudyPlan, args: argparse.Namespace) -> None:
    """Load each condition's data once (its first run's), so a bad column or too many clients fails before the
    study directory is written, not in every child run."""
    from ffm.config import load_job  # every plug-in loads with it: only once it runs
    from ffm.workspace import check_data

    seen: set[tuple] = set()
    for run in plan.runs():
        if run.condition not in seen:
            seen.add(run.condition)
            check_data(load_job(args.config, [*args.overrides, *run.overrides]))


def compare_main(args: argparse.Namespace) -> int:
    """Run (or resume) a study and write its report; 1 when a run failed, else 0."""
    from ffm.config import load_job  # every plug-in loads with it: only once it runs
    from ffm.study import StudyPlan, run_study, save_results
    from ffm.study.plan import parse_axis
    from ffm.study.report import write_report
    from ffm.study.results import row_of

    plan = StudyPlan(modes=[m.strip() for m in args.modes.split(",") if m.strip()],
                     seeds=list(range(args.seeds)), grid=parse_axis(args.grid, "--grid"),
                     vary=parse_axis(args.vary, "--vary"), tune_seeds=args.tune_seeds)
    study_dir = Path(args.study_dir or Path("runs") / f"study-{Path(args.config).stem}")
    for run in plan.runs():  # every run's config must be valid before the first one starts
        load_job(args.config, [*args.overrides, *run.overrides])
    _check_each_condition(plan, args)
    recorded = {"config": str(args.config), "overrides": list(args.overrides), "modes": plan.modes,
                "seeds": plan.seeds, "grid": plan.grid, "vary": plan.vary, "tune_seeds": plan.tune_seeds}
    _check_same_study(study_dir, recorded)
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "study.json").write_text(json.dumps(recorded, indent=2))
    runs = plan.runs()
    print(f"ffm compare: {len(runs)} runs ({len(plan.modes)} modes x {len(plan.seeds)} seeds x "
          f"{len(plan.grid_points())} grid points x {len(plan.conditions())} conditions"
          f"{f'; the grid on {plan.tune_seeds} seed(s), the rest at the chosen points' if plan.tune_seeds else ''})"
          f" -> {study_dir}")

    def stage(planned: list) -> tuple[dict, list]:
        if args.report_only:
            found = {r.name: json.loads(p.read_text()) if (p := study_dir / "runs" / r.name / "study_run.json")
                     .is_file() else {"exit": None, "not_run": True} for r in planned}
        else:
            found = run_study(plan, str(args.config), list(args.overrides), study_dir, workers=args.workers,
                              audit=(args.audit_examples, args.audit_shadows), runs=planned)
        return found, [row_of(run, found[run.name], study_dir / "runs" / run.name) for run in planned]

    records, rows = stage(runs)
    if plan.tune_seeds:  # the other seeds at each mode's chosen point
        from ffm.study.results import choose

        rest = [r for r in plan.runs(choose(rows)) if r.name not in records]
        more, rows_more = stage(rest)
        records, rows, runs = {**records, **more}, rows + rows_more, runs + rest
    save_results(rows, study_dir / "results.csv")
    plan_text = (f"Plan: modes {', '.join(plan.modes)}; seeds {plan.seeds}; grid "
                 f"{plan.grid or 'none'}; conditions {plan.vary or 'none'}; {len(runs)} runs.")
    command = " ".join(["ffm", *map(shlex.quote, getattr(args, "argv", None) or sys.argv[1:])])
    report = write_report(rows, study_dir, command, plan_text)
    failed = sum(r["status"] != "done" for r in rows)
    print(f"ffm compare: {len(rows) - failed} runs done, {failed} failed; report {report}")
    return 0 if failed == 0 else 1
