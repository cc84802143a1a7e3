"""The observer seam: where a run's reports go, besides the run directory's ``metrics.jsonl``.

An observer is told when a run starts, every round's metrics line (the same dict that ``metrics.jsonl``
gets), the server's timings of every round, and the summary at the end. Observers are selected the way
Hugging Face's ``report_to`` selects trackers: ``report.to=tensorboard,mlflow``. A benchmark may register its
own to read the timings in process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ffm.registry import Registry
from ffm.settings import Job

__all__ = ["OBSERVERS", "Observer", "scalars_of"]


class Observer:
    """One destination of a run's reports. ``config``: the keys it adds to the ``report`` section."""

    config: ClassVar[type | None] = None

    def __init__(self, job: Job, run_dir: Path) -> None:
        self.job, self.run_dir = job, run_dir

    def round(self, line: dict[str, Any]) -> None:
        """A round's metrics line (round 0 is the initial model), as ``metrics.jsonl`` gets it."""

    def timing(self, server_round: int, seconds: dict[str, float]) -> None:
        """Where the server's time went in a round: ``evaluate`` (global evaluation and the line), ``checkpoint``,
        and ``between`` (from the end of the previous round's evaluation: the round's messages and aggregation)."""

    def finish(self, summary: dict[str, Any]) -> None:
        """The run's summary; the observer closes what it opened."""


def scalars_of(line: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of a metrics line, nested keys joined by '/' (what trackers plot)."""
    out: dict[str, float] = {}
    for key, value in line.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars_of(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and key != "round":
            out[name] = float(value)
    return out


OBSERVERS: Registry[type[Observer]] = Registry("report.to")
"""Observers by the name ``report.to`` takes: one file with an ``Observer`` subclass plus one register line."""
