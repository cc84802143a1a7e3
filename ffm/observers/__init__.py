"""Where a run reports: ``metrics.jsonl`` always (the run directory), plus the observers ``report.to`` names.

:class:`Reporters` is what the ServerApp talks to: it fans each event out to the chosen observers. Registered:
``tensorboard`` (PyTorch's SummaryWriter) and ``mlflow`` (a local MLflow file store by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffm.observers.base import OBSERVERS, Observer, scalars_of
from ffm.observers.mlflow import MLflow
from ffm.observers.tensorboard import TensorBoard
from ffm.settings import SECTIONS, Composite, Job, SectionSpec, items

__all__ = ["OBSERVERS", "Observer", "ReportConfig", "Reporters", "scalars_of"]


@dataclass
class ReportConfig:
    """Where each round's metrics go besides the run directory's metrics.jsonl."""

    to: list[str] = items("trackers that get every round's metrics and the summary, like Hugging Face's report_to",
                          choices=lambda: OBSERVERS.names())


class Reporters:
    """The observers of one run, told every event in the order ``report.to`` names them."""

    def __init__(self, job: Job, run_dir: Path) -> None:
        self.observers = [OBSERVERS[name](job, run_dir) for name in job.report.to]

    def round(self, line: dict[str, Any]) -> None:
        """Every observer gets the round's metrics line."""
        for observer in self.observers:
            observer.round(line)

    def timing(self, server_round: int, seconds: dict[str, float]) -> None:
        """Every observer gets the server's timings of the round."""
        for observer in self.observers:
            observer.timing(server_round, seconds)

    def finish(self, summary: dict[str, Any]) -> None:
        """Every observer gets the summary and closes."""
        for observer in self.observers:
            observer.finish(summary)


OBSERVERS.register("tensorboard", TensorBoard)
OBSERVERS.register("mlflow", MLflow)
SECTIONS.register("report", SectionSpec(Composite(ReportConfig, OBSERVERS), position=50))
