"""TensorBoard: every round's numeric metrics as scalars (``tensorboard --logdir RUN_DIR/tensorboard``), through
PyTorch's own ``torch.utils.tensorboard`` writer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffm.observers.base import Observer, scalars_of
from ffm.settings import Job, option

__all__ = ["TensorBoard", "TensorBoardConfig"]


@dataclass
class TensorBoardConfig:
    """Where TensorBoard's event files go."""

    tensorboard_dir: str = option("", "report.to=tensorboard: the log directory (empty = RUN_DIR/tensorboard)")


class TensorBoard(Observer):
    """Scalars per round, the summary's figures as text."""

    config = TensorBoardConfig

    def __init__(self, job: Job, run_dir: Path) -> None:
        super().__init__(job, run_dir)
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package: only when chosen

        self.writer = SummaryWriter(job.report.tensorboard_dir or str(run_dir / "tensorboard"))

    def round(self, line: dict[str, Any]) -> None:
        for name, value in scalars_of(line).items():
            self.writer.add_scalar(name, value, global_step=int(line["round"]))
        self.writer.flush()

    def timing(self, server_round: int, seconds: dict[str, float]) -> None:
        for name, value in seconds.items():
            self.writer.add_scalar(f"server_seconds/{name}", value, global_step=server_round)

    def finish(self, summary: dict[str, Any]) -> None:
        figures = {k: v for k, v in summary.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
        self.writer.add_text("summary", "\n".join(f"{k}: {v}" for k, v in figures.items()))
        self.writer.close()
