"""What the hand-run benchmarks share: one cached `ffm run` child process per named run, and its figures."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_cached(work: Path, name: str, config: Path, overrides: list[str], *, report_only: bool = False) -> dict:
    """Run ``ffm run CONFIG OVERRIDES`` into ``work/name`` unless its summary exists (an interrupted run
    resumes); return its summary and metrics lines, or the log's tail when it failed. With ``report_only``
    nothing runs: a run without a summary is reported as not run."""
    run_dir = work / name
    if report_only and not (run_dir / "summary.json").is_file():
        return {"name": name, "error": "not run"}
    if not (run_dir / "summary.json").is_file():
        cmd = [str(REPO / ".venv" / "bin" / "ffm"), "run", str(config), *overrides, f"run_dir={run_dir}"]
        cmd += ["resume=true"] if run_dir.exists() else []
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        started = time.perf_counter()
        log = work / f"{name}.log"
        with log.open("w") as out:
            code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        print(f"  {name}: exit {code}, {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            return {"name": name, "error": log.read_text()[-400:]}
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"name": name, "summary": summary, "lines": lines}


def acc(result: dict) -> str:
    if result.get("error") == "not run":
        return "not run"
    return "failed" if "error" in result else f"{result['summary']['final_test_accuracy']:.4f}"


def curve(result: dict) -> str:
    return "" if "error" in result else ", ".join(f"{ln['test_accuracy']:.3f}" for ln in result["lines"])


def mb(result: dict, key: str) -> str:
    """Megabytes per round of ``bytes_up`` / ``bytes_down``."""
    if "error" in result:
        return "-"
    rounds = max(1, result["summary"]["rounds"])
    return f"{result['summary'][key] / rounds / 1e6:.2f}"


def budget_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options every AG News benchmark shares: where runs are cached, where the table goes, the budget."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-strategies")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / out)
    parser.add_argument("--max-examples", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="report the runs already done; run nothing")
    return parser


def budget(args: argparse.Namespace) -> list[str]:
    """The shared budget as overrides of configs/demo.yaml: 10 clients, all training every round."""
    return ["data.source=ag_news", f"data.max_examples={args.max_examples}", "data.test_fraction=0.2",
            "federation.num_clients=10", f"federation.rounds={args.rounds}", "federation.fraction_train=1.0",
            "federation.fraction_evaluate=0", f"train.local_steps={args.local_steps}", "train.local_epochs=1",
            "progress=false", f"seed={args.seed}"]
