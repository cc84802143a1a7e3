"""What the hand-run benchmarks share, defined once.

- one cached ``ffm run`` child process per named run, and its figures (``run_cached``, ``acc``, ``curve``, ``mb``,
  the AG News budget); ``measured``: the same child with its wall time and peak PSS (bench/memory.py);
- a run directory's metrics lines (``metrics_lines``, ``read_rounds``) and how a path is shown (``shown``);
- the setup of a benchmark that runs jobs in its own process (``quiet_libraries``, ``set_threads``,
  ``torch_threads``, ``make_job``) and what it reports about itself (``peak_rss_bytes``, ``machine_lines``);
- ``RoundClock``: an observer (``report.to=bench_clock``, see ``clocked``) that records, in process, the
  server's timings of every round and every client's ``train_seconds``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ffm.observers import OBSERVERS, Observer

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"
FFM = str(REPO / ".venv" / "bin" / "ffm")
CLOCK = "bench_clock"  # the observer name of RoundClock (report.to)


def run_cached(work: Path, name: str, config: Path, overrides: list[str], *, report_only: bool = False,
               threads: int = 1, kept: Path | None = None) -> dict:
    """Run ``ffm run CONFIG OVERRIDES`` into ``work/name`` unless its summary exists (an interrupted run
    resumes); return its summary and metrics lines, or the log's tail when it failed. With ``report_only``
    nothing runs: a run without a summary is reported as not run. ``threads``: the child's torch threads.

    ``kept``: a committed JSON file of finished runs (summary and metrics lines, keyed by name, stamped with the
    resolved job). ``runs/`` is not committed, so a fresh checkout has none of the runs a
    report was made from; a finished run is recorded there and a report-only run without its directory is
    reported from it, as long as the job it resolves to is unchanged. A run is never skipped because of it."""
    run_dir = work / name
    stamp = resolved_job(config, overrides) if kept is not None else None  # only a kept record needs it
    if report_only and not (run_dir / "summary.json").is_file():
        return recall(kept, name, stamp) or {"name": name, "error": "not run" if name not in _kept(kept)
                                             else "not run (its job changed since)"}
    if not (run_dir / "summary.json").is_file():
        cmd = [FFM, "run", str(config), *overrides, f"run_dir={run_dir}"]
        cmd += ["resume=true"] if run_dir.exists() else []
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        started = time.perf_counter()
        log = work / f"{name}.log"
        with log.open("w") as out:
            code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        print(f"  {name}: exit {code}, {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            return {"name": name, "error": log.read_text()[-400:]}
    summary = json.loads((run_dir / "summary.json").read_text())
    result = {"name": name, "summary": summary, "lines": metrics_lines(run_dir)}
    if kept is not None:
        remember(kept, name, stamp, {"summary": summary, "lines": result["lines"]})
    return result


def remember(kept: Path, name: str, stamp: dict[str, Any], record: dict[str, Any]) -> None:
    """Record a finished run in the committed JSON file ``kept`` (see :func:`run_cached`), stamped with its job."""
    records = _kept(kept)
    records[name] = {**record, "stamp": stamp}
    kept.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")


def recall(kept: Path | None, name: str, stamp: dict[str, Any]) -> dict[str, Any] | None:
    """The record of run ``name`` in ``kept`` (marked ``kept``), or None when there is none or its job changed."""
    record = _kept(kept).get(name)
    if record is None or not _same_job(record["stamp"], stamp):
        return None
    return {"name": name, **{k: v for k, v in record.items() if k != "stamp"}, "kept": True}


def _same_job(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> bool:
    """Whether a recorded stamp is the job ``current`` resolves to. A key the record lacks is an option added
    since, which by ffm's rule keeps the old behaviour at its default: the job is the same while the current one
    leaves it there. A key the record has and the current job lacks (an option removed) is a different job."""
    if set(recorded) - set(current):
        return False
    for key, value in current.items():
        dotted = f"{prefix}{key}"
        if key not in recorded:
            if _defaults().get(dotted) != {repr(value)}:
                return False
        elif isinstance(value, dict) and isinstance(recorded[key], dict):
            if not _same_job(recorded[key], value, f"{dotted}."):
                return False
        elif recorded[key] != value:
            return False
    return True


@functools.cache
def _defaults() -> dict[str, set[str]]:
    """Every config key's defaults as ffm documents them (the repr of each value): a key that variants share
    may default differently in each (method.targets), and then no single value is its default."""
    from ffm.config import describe_keys

    defaults: dict[str, set[str]] = {}
    for key, _, default, _ in describe_keys():
        defaults.setdefault(key, set()).add(default)
    return defaults


def resolved_job(config: Path, overrides: list[str]) -> dict[str, Any]:
    """The job a run of ``config`` with ``overrides`` does, as ffm resolves it (every default filled in), without
    where it writes and with this checkout's path taken out: two ways of asking for the same job stamp alike."""
    from ffm.config import job_to_dict, load_job

    job = job_to_dict(load_job(str(config), [o for o in overrides if not o.startswith("run_dir=")]))
    for key in ("run_dir", "resume", "progress"):
        job.pop(key, None)
    return json.loads(json.dumps(job, default=str).replace(f"{REPO}/", ""))


def _kept(path: Path | None) -> dict[str, dict]:
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def measured(work: Path, name: str, overrides: list[str], config: Path = DEMO,
             command: list[str] | None = None, env: dict[str, str] | None = None) -> dict:
    """Run ``ffm run CONFIG OVERRIDES`` (or ``command``, which must write its run into ``work/name``) unless
    cached; its summary, wall seconds, peak PSS and most processes in its tree."""
    from memory import run_measured

    record = work / f"{name}.measured.json"
    if record.is_file():
        return json.loads(record.read_text())
    run_dir = work / name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    command = command or [FFM, "run", str(config), *overrides, f"run_dir={run_dir}", "progress=false"]
    code, seconds, peak, procs = run_measured(command, env, work / f"{name}.log")
    result = {"name": name, "exit": code, "seconds": round(seconds, 1), "peak_pss_mib": round(peak), "processes": procs}
    if code == 0:
        result["summary"] = json.loads((run_dir / "summary.json").read_text())
    record.write_text(json.dumps(result))
    print(f"  {name}: exit {code}, {seconds:.0f} s, peak {peak:.0f} MiB", flush=True)
    return result


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


# ----------------------------------------------------------------------------------------------------
# A run directory's figures


def metrics_lines(run_dir: Path) -> list[dict]:
    """Every metrics.jsonl line of a run, round 0 (the initial model) first."""
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]


def read_rounds(run_dir: Path) -> list[dict]:
    """metrics.jsonl lines of the trained rounds (round 0 is the initial model)."""
    return [line for line in metrics_lines(run_dir) if line["round"] > 0]


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (what a report prints)."""
    path = Path(path)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# ----------------------------------------------------------------------------------------------------
# Jobs run in the benchmark's own process


def quiet_libraries() -> None:
    """What ``ffm run`` does without --verbose: no library warnings, Flower logs warnings only, no progress bars.

    flwr is imported first: importing it sets its logger to DEBUG, which would undo an earlier setLevel.
    """
    import logging
    import warnings

    import datasets
    import flwr.serverapp  # noqa: F401 - for its import-time logger setup, see above
    import transformers

    warnings.simplefilter("ignore")  # deprecation and resampling notices would bury the benchmark's own lines
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)  # Opacus configures it on import
    logging.getLogger("flwr").setLevel(logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads (0 leaves torch's default: one per core)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def without_method(config: str | Path, work: Path) -> Path:
    """A copy of ``config`` in ``work`` without its method section (e.g. configs/demo.yaml's LoRA keys are not keys
    of method.name=full)."""
    import yaml

    raw = yaml.safe_load(Path(config).read_text())
    raw.pop("method", None)
    path = Path(work) / f"{Path(config).stem}-no-method.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def make_job(config: str | Path, overrides: list[str], run_dir: Path) -> Any:
    """The job of ``config`` plus ``overrides``, writing into ``run_dir``, without a progress bar."""
    from ffm.config import load_job

    return load_job(config, [*overrides, f"run_dir={run_dir}", "progress=false"])


def peak_rss_bytes() -> int:
    """Peak RSS of this address space (VmHWM).

    Not ``ru_maxrss``: Linux carries the parent's high-water mark across fork/exec into it, so a child of
    a big parent would report at least the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine_lines() -> list[str]:
    """The report's lines about when and where it was measured: date, CPU, cores, threads, RAM, versions."""
    import flwr
    import peft
    import torch
    import transformers

    cpu = next((x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if x.startswith("model name")), "?")
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu}; os.cpu_count()={os.cpu_count()}, usable cores={len(os.sched_getaffinity(0))}, "
        f"torch threads={torch.get_num_threads()}, {ram:.0f} GiB RAM",
        f"- python {platform.python_version()}, torch {torch.__version__}, flwr {flwr.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}",
    ]


def process_parser(description: str, out: Path, config_help: str) -> argparse.ArgumentParser:
    """The options of a benchmark that runs its jobs itself: the job file, torch threads, where the table goes,
    whether the scratch run directories are kept."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="configs/demo.yaml", help=config_help)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of every process (0 = torch's default). 1 by default: on a shared 2-core machine two "
        "OpenMP threads stall each other whenever another process holds a core, which makes timings swing "
        "several-fold",
    )
    parser.add_argument("--out", "--output", dest="out", type=Path, default=out, help="where the Markdown table goes")
    parser.add_argument("--keep-runs", action="store_true", help="keep the scratch run directories (and logs)")
    return parser


@contextlib.contextmanager
def scratch_dir(prefix: str, *, keep: bool) -> Iterator[Path]:
    """A fresh temporary folder for a benchmark's runs; removed afterwards unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"runs kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def report_head(title: str, load: tuple[float, ...], seconds: float, notes: list[str] | tuple = ()) -> list[str]:
    """A report's title and where it was measured: machine, load average at start and end, ``notes``, command."""
    return [
        f"# {title}",
        "",
        *machine_lines(),
        f"- load average (1 min) at start / end: {load[0]:.2f} / {os.getloadavg()[0]:.2f} (other work shares "
        "the cores)",
        *notes,
        f"- command: `{' '.join(['python', *sys.argv])}`; whole benchmark {seconds:.0f} s",
        "",
    ]


def publish(text: str, out: Path) -> None:
    """Write the report to ``out`` and print it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    print(f"\nwritten to {out}")


# ----------------------------------------------------------------------------------------------------
# RoundClock: the server's timings and the clients' train_seconds, through the observer seam


class RoundClock(Observer):
    """Records, for one run, what the ServerApp tells its observers: per round the ``between`` / ``evaluate`` /
    ``checkpoint`` seconds (``Observer.timing``) and every client's ``train_seconds`` (the metrics line's
    ``clients``: time inside ``train_steps`` in the ClientApp). Each run's clock is kept under its run
    directory: read it back with :func:`clock_of` after ``run_local`` returns."""

    runs: ClassVar[dict[Path, RoundClock]] = {}

    def __init__(self, job: Any, run_dir: Path) -> None:
        super().__init__(job, run_dir)
        self.seconds: dict[int, dict[str, float]] = {}
        self.train: dict[int, list[float]] = {}
        RoundClock.runs[Path(run_dir).resolve()] = self

    def round(self, line: dict[str, Any]) -> None:
        self.train[line["round"]] = [client.get("train_seconds", 0.0) for client in line.get("clients", [])]

    def timing(self, server_round: int, seconds: dict[str, float]) -> None:
        self.seconds[server_round] = dict(seconds)

    @property
    def rounds(self) -> float:
        """The rounds themselves: sum over rounds >= 1 of ``between`` (from the end of the previous round's
        evaluate_fn to the start of this one: sampling, messages, every ClientApp call, aggregation)."""
        return sum(s["between"] for r, s in self.seconds.items() if r >= 1)

    @property
    def server_eval(self) -> float:
        """The server's evaluate_fn: global evaluation, metrics line and checkpoint, every round (0 included)."""
        return sum(s["evaluate"] + s["checkpoint"] for s in self.seconds.values())

    @property
    def train_steps(self) -> float:
        """Sum over rounds and clients of ``train_seconds``."""
        return sum(sum(per_round) for per_round in self.train.values())


def clocked(overrides: list[str]) -> list[str]:
    """``overrides`` plus ``report.to=bench_clock``; registers :class:`RoundClock` under that name (once)."""
    if CLOCK not in OBSERVERS:
        OBSERVERS.register(CLOCK, RoundClock)
    return [*overrides, f"report.to={CLOCK}"]


def clock_of(run_dir: Path) -> RoundClock:
    """The clock of the run that wrote ``run_dir`` (run with :func:`clocked` overrides, in this process)."""
    return OBSERVERS[CLOCK].runs[Path(run_dir).resolve()]


def tiny_bert(root: Path) -> Path:
    """A 2-layer, 32-wide random BERT with MiniLM's tokenizer under ``root/tiny-bert`` (made once): the model of
    the federation benchmarks, where the faults and the attacks matter, not the model."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ffm.models import resolve_model_path

    path = root / "tiny-bert"
    if not (path / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
        torch.manual_seed(0)
        BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                                 num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                                 max_position_embeddings=128)).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path

