"""What a client does differently inside a continual stream: its batches and penalties of this round."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from flwr.app import RecordDict

from ffm.continual.ewc import consolidate, ewc_penalty
from ffm.continual.replay import remember, replay_batches
from ffm.continual.stream import stage_classes
from ffm.keys import Salt, derive_seed
from ffm.local_training import Penalty
from ffm.settings import Job

if TYPE_CHECKING:
    from ffm.workspace import Workspace

__all__ = ["continual_round"]


def continual_round(
    job: Job, workspace: Workspace, index: int, stage: int, state: RecordDict, batches: Iterable[dict],
    steps: int, seed: int,
) -> tuple[Iterable[dict], list[Penalty]]:
    """This round's batches (replay mixes in the node's buffer) and extra loss terms (EWC) at ``stage``."""
    c = job.continual
    if stage == 0 or c.approach not in ("replay", "ewc"):
        return batches, []
    generator = torch.Generator().manual_seed(derive_seed(seed, stage, Salt.CONTINUAL_STAGE))
    if c.approach == "replay":
        finished = [(k, workspace.examples("train", index, k)) for k in range(stage)]
        buffer = remember(state, finished, c.replay_size, seed=derive_seed(job.seed, stage, Salt.REPLAY_BUFFER, index))
        data = workspace.examples("train", index, stage)
        size = c.replay_batch or job.train.batch_size
        return replay_batches(data, buffer, job.train.batch_size, size, steps, generator), []
    head = None
    keys = workspace.stream.head_keys
    if keys:
        head = (keys, stage_classes(job, workspace.stream.label_names)[stage - 1])
    model, task = workspace.model, workspace.task
    consolidate(state, model, task.loss, (stage - 1, workspace.examples("train", index, stage - 1)),
                c.ewc_samples, generator, head)
    penalty = ewc_penalty(state, model, c.ewc_lambda)
    return batches, [penalty] if penalty is not None else []
