"""The continual kinds of :class:`~ffm.data.stream.Stream`: several stages, and what the workspace, the
ClientApp and the ServerApp do differently because of them (all of it here, behind the stream's hooks)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from flwr.app import RecordDict
from torch import nn

from ffm.continual.head import fit_head, head_keys, shrink_head
from ffm.continual.local import continual_round
from ffm.continual.stages import StageLoop
from ffm.continual.stream import active_parties, joint_data, split_stream, stage_classes, stage_of, stage_rounds
from ffm.data import Stream, load_source
from ffm.errors import DataError
from ffm.settings import Job

__all__ = ["ContinualStream", "open_continual"]


class ContinualStream(Stream):
    """The job's data cut into ``continual.stages`` stages (see :mod:`ffm.continual.stream`)."""

    def __init__(self, stages: list, joint: Any, job: Job) -> None:
        super().__init__(stages, joint, job.federation.num_clients)
        self.job = job
        self.head_keys: list[str] = []  # class-incremental: the head's per-class tensors
        self.full_head: dict[str, torch.Tensor] = {}  # ... with every class's rows (where new rows come from)

    def stage_of(self, server_round: int) -> int | None:
        return stage_of(self.job, server_round)

    def phases(self, rounds: int, done: int = 0) -> list[tuple[int | None, int]]:  # continual jobs never resume
        per_stage = stage_rounds(self.job)
        return [(k, k * per_stage + 1) for k in range(self.job.continual.stages)]

    def active_parties(self, stage: int | None) -> list[int]:
        return active_parties(self.job, stage)

    def prepare(self, model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A class-incremental head starts with the first stage's classes (the rest arrive later)."""
        c = self.job.continual
        if c.kind != "class_incremental" or c.approach == "joint":
            return state
        keys = head_keys(state, len(self.label_names))
        if not keys:
            raise DataError(f"continual.kind=class_incremental: method.name={self.job.method.name} trains no "
                            "classification head to grow (its head must be trainable)")
        self.head_keys, self.full_head = keys, {k: state[k].clone() for k in keys}
        state = shrink_head(state, keys, stage_classes(self.job, self.label_names)[0])
        fit_head(model, state, keys)
        return state

    def fit(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        if self.head_keys:  # a class-incremental head has as many rows as the classes seen so far
            fit_head(model, state, self.head_keys)

    def local_round(self, job: Job, workspace: Any, index: int, stage: int, node_state: RecordDict,
                    batches: Iterable[dict], steps: int, seed: int) -> tuple[Iterable[dict], list[Callable]]:
        return continual_round(job, workspace, index, stage, node_state, batches, steps, seed)

    def server_loop(self, job: Job, workspace: Any, run: Any) -> StageLoop:
        return StageLoop(job, workspace, run)


def open_continual(job: Job, data_path: str | None) -> ContinualStream:
    """Every stage's split of the job's source(s), and all of them together (the joint upper bound)."""
    if data_path:
        raise DataError(f"continual.kind={job.continual.kind}: a node's exported folder ('{data_path}') holds no "
                        "stages; start the SuperNodes without data-path (each builds its own split of the stream)")
    stages = split_stream(load_source(job.data), job)
    return ContinualStream(stages, joint_data(stages), job)
