"""Run a study: each run of the plan in a child process (``ffm run``), so its peak memory is its own and one
crashed run cannot take the study down. A run with a summary is reused; an interrupted one resumes.
With ``workers`` > 1 that many children run at once (each with its share of the cores: set OMP_NUM_THREADS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from ffm.study.plan import StudyPlan, StudyRun

__all__ = ["run_study", "run_one"]

RUN_RECORD = "study_run.json"  # the study's own figures of a run: peak memory, wall time, exit status


def _audit(run_dir: Path, log: Path, env: dict, examples: int, shadows: int) -> int:
    """``ffm audit`` of a finished run that has none yet (its MIA AUC goes into summary.json)."""
    if examples <= 0 or "audit" in json.loads((run_dir / "summary.json").read_text()):
        return 0
    cmd = [sys.executable, "-m", "ffm", "audit", str(run_dir), "--examples", str(examples), "--shadows", str(shadows)]
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        return subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def run_one(run: StudyRun, config: str, overrides: list[str], runs_dir: Path, threads: int = 0,
            audit: tuple[int, int] = (0, 0)) -> dict:
    """Run (or resume, or reuse) one run, then audit it (``audit`` = (examples, shadows); 0 examples: no audit);
    return its study record."""
    run_dir = runs_dir / run.name
    record_path = run_dir / RUN_RECORD
    env = os.environ.copy()
    if threads and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads)  # workers share the cores instead of each taking them all
    if (run_dir / "summary.json").is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        record["audit_exit"] = _audit(run_dir, runs_dir / f"{run.name}.log", env, *audit)
        return record
    resume = ["resume=true"] if (run_dir / "config.yaml").is_file() else []
    cmd = [sys.executable, "-m", "ffm", "run", config, *overrides, *run.overrides,
           f"run_dir={run_dir}", "progress=false", "train.eval_parties=true", *resume]
    if audit[0] > 0:  # audited in the run's own process (a reused run without an audit gets `ffm audit`)
        cmd += ["--audit", str(audit[0]), "--audit-shadows", str(audit[1])]
    runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (runs_dir / f"{run.name}.log").open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    record = {
        "exit": child.returncode,
        "wall_s": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports kilobytes
        "resumed": bool(resume),
        "command": cmd,
    }
    if child.returncode == 0:
        record_path.write_text(json.dumps(record, indent=2))
        record["audit_exit"] = _audit(run_dir, runs_dir / f"{run.name}.log", env, *audit)
    return record


def run_study(plan: StudyPlan, config: str, overrides: list[str], study_dir: Path, *, workers: int = 1,
              audit: tuple[int, int] = (0, 0), progress: bool = True, runs: list | None = None) -> dict[str, dict]:
    """Run every run of ``plan`` (or the given ``runs`` of it), ``workers`` at a time; return each run's record by
    name (failed ones carry their exit status)."""
    runs_dir = study_dir / "runs"
    records: dict[str, dict] = {}
    runs = plan.runs() if runs is None else runs
    with tqdm(total=len(runs), desc="study runs", unit="run", disable=not progress) as bar, \
            ThreadPoolExecutor(max(1, workers)) as pool:
        threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
        futures = {pool.submit(run_one, run, config, overrides, runs_dir, threads, audit): run for run in runs}
        for future in as_completed(futures):
            run = futures[future]
            records[run.name] = future.result()
            bar.set_postfix_str(run.name)
            bar.update(1)
            if records[run.name].get("audit_exit"):
                tqdm.write(f"ffm compare: the audit of {run.name} failed; see {runs_dir / (run.name + '.log')}")
            if records[run.name]["exit"] != 0:
                tqdm.write(f"ffm compare: run {run.name} failed (exit {records[run.name]['exit']}); "
                           f"see {runs_dir / (run.name + '.log')}")
    return records
