"""The run directory: everything a run leaves behind, written so that an interruption loses nothing.

    config.yaml          the resolved job config
    run-id               the run's id (nodes key the state they keep on their own disk by it; kept on resume)
    metrics.jsonl        one JSON line per round (round 0 = the initial model)
    checkpoints/         round-NNNNNN.pt after every round (written atomically; names sort up to round 999,999)
    samples.jsonl        generative tasks: what the global model wrote from the fixed prompt, per round
    final/               the final trainable state via save_pretrained (PeftModel.from_pretrained loads it)
    summary.json         the figures that matter, written at the end
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ffm.errors import CheckpointError, ConfigError
from ffm.settings import MOVED, Job, flatten, nest, option, require, to_dict

__all__ = ["Checkpoint", "CheckpointConfig", "RunDirectory"]


@dataclass
class CheckpointConfig:
    """What a run keeps of its round checkpoints."""

    keep_last: int = option(0, "keep only the newest this many round checkpoints (0 = keep every round)")

    def __post_init__(self) -> None:
        require(self.keep_last >= 0, "checkpoint.keep_last must be 0 (keep all) or positive")


Checkpoint = dict[str, Any]
# What a resumed run may change: how long it goes, what it prints and keeps, how it is measured at the end.
RESUMABLE_CHANGES = {"resume", "run_dir", "progress", "federation.rounds", "checkpoint.keep_last",
                     "train.eval_parties", "train.eval_train_examples", "runtime"}


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class RunDirectory:
    """One run's folder: its config, metrics lines, checkpoints, samples and summary."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / "metrics.jsonl"

    def start(self, job: Job) -> None:
        """Create the directory for a new run; refuse to overwrite another run's results, and refuse to resume
        a run under a config that changes what it computes."""
        if not job.resume and self.checkpoints.is_dir() and any(self.checkpoints.iterdir()):
            raise ConfigError(
                f"run_dir '{self.path}' already holds a run; continue it with --resume {self.path} "
                "or choose another run_dir"
            )
        if job.resume and (self.path / "config.yaml").is_file():
            self._check_same_job(job)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if not (self.path / "run-id").is_file():
            _atomic_write(self.path / "run-id", lambda p: p.write_text(uuid.uuid4().hex[:16]))
        text = yaml.safe_dump(to_dict(job) | {"resume": False}, sort_keys=False)
        _atomic_write(self.path / "config.yaml", lambda p: p.write_text(text))

    def _check_same_job(self, job: Job) -> None:
        before = flatten(self.read_config(self.path))
        now = flatten(to_dict(job))
        # A key the run's file lacks was added to ffm since: the run used what is now its default.
        differing = sorted(k for k in before.keys() if before.get(k) != now.get(k) and k not in RESUMABLE_CHANGES)
        if differing:
            shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in differing[:5])
            raise ConfigError(
                f"cannot resume '{self.path}' under another config ({shown}); resume with the run's own config "
                "(ffm run --resume RUN_DIR) or start a new run_dir"
            )

    @property
    def run_id(self) -> str:
        """The run's id, written when it started: the same after every resume, new for every new run."""
        return (self.path / "run-id").read_text().strip()

    def append_metrics(self, line: dict[str, Any]) -> None:
        """Append one round's line to metrics.jsonl, on disk before it returns (fsync)."""
        with self.metrics.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every line of metrics.jsonl so far (empty before the first round)."""
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def keep_metrics_through(self, last_round: int) -> None:
        """Drop lines of rounds after ``last_round`` (a crash may have logged a round it never checkpointed)."""
        lines = [m for m in self.read_metrics() if m["round"] <= last_round]
        text = "".join(json.dumps(m) + "\n" for m in lines)
        _atomic_write(self.metrics, lambda p: p.write_text(text))

    def append_sample(self, server_round: int, text: str) -> None:
        """What a generative model wrote from the task's fixed prompt (the prompt included)."""
        with (self.path / "samples.jsonl").open("a") as handle:
            handle.write(json.dumps({"round": server_round, "text": text}) + "\n")

    def checkpoint_path(self, server_round: int) -> Path:
        """Where round ``server_round``'s checkpoint is written."""
        return self.checkpoints / f"round-{server_round:06d}.pt"

    def save_checkpoint(
        self, server_round: int, state: dict[str, torch.Tensor], extra: dict | None = None, *, keep_last: int = 0
    ) -> Path:
        """Write round ``server_round``'s checkpoint; with ``keep_last`` > 0 delete all but the newest that many."""
        path = self.checkpoint_path(server_round)
        payload = {"round": server_round, "state": state, "extra": extra or {}}
        _atomic_write(path, lambda p: torch.save(payload, p))
        if keep_last > 0:
            for old in self._checkpoint_files()[:-keep_last]:
                old.unlink()
        return path

    def _checkpoint_files(self) -> list[Path]:
        """Checkpoints in round order (by number: older runs wrote 4-digit names)."""
        files = self.checkpoints.glob("round-*.pt") if self.checkpoints.is_dir() else []
        return sorted(files, key=lambda p: int(p.stem.removeprefix("round-")))

    def latest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint of the last complete round, or None when the run has none yet."""
        files = self._checkpoint_files()
        if not files:
            return None
        try:
            payload = torch.load(files[-1], map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or not {"round", "state"} <= payload.keys():
                raise ValueError("missing 'round' or 'state'")
        except Exception as exc:  # torch raises many types for a damaged file
            raise CheckpointError(
                f"checkpoint '{files[-1]}' is unreadable ({type(exc).__name__}); delete it to resume from the "
                "round before"
            ) from None
        return payload

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json atomically (a crash leaves the previous one whole)."""
        text = json.dumps(summary, indent=2)
        _atomic_write(self.path / "summary.json", lambda p: p.write_text(text))

    @staticmethod
    def read_config(path: str | Path) -> dict[str, Any]:
        """The resolved config of an earlier run, for ``--resume``."""
        config = Path(path) / "config.yaml"
        if not config.is_file():
            raise CheckpointError(f"'{path}' is not a run directory (no config.yaml); pass the folder of a run")
        try:
            raw = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError:
            raise CheckpointError(f"'{config}' is not valid YAML; the run cannot be resumed") from None
        return _migrated(raw)


def _migrated(raw: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml that an older ffm wrote, with its renamed keys and values under their new names (a user's
    own file gets an error instead: the job refuses a moved key)."""
    flat = flatten(raw)
    for old, new in MOVED.items():
        key, sep, value = old.partition("=")
        if sep and str(flat.get(key)) == value:
            flat[key] = new.partition("=")[2]
        elif not sep and old in flat:
            flat[new] = flat.pop(old)
    return nest(flat)
