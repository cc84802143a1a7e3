"""The data seam of a run: a :class:`Stream` says which data each party holds at each stage.

A plain job is a stream of one stage. A continual job (``ffm.continual``) is a stream of several: new private
data arrives at each party, stage after stage. The workspace, the ClientApp and the ServerApp consume a
stream through this interface and never ask which kind it is; a kind is one class plus one ``STREAMS.register``
line, chosen by ``continual.kind``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import RecordDict
from torch import nn

from ffm.data.exported import load_party, load_server_test
from ffm.data.partition import FederatedData, split_federated
from ffm.data.sources import load_source
from ffm.registry import Registry
from ffm.settings import Job

__all__ = ["STREAMS", "Stream", "open_stream"]


@dataclass
class Stream:
    """Every stage's split (``stages``) and all of them at once (``joint``); one stage by default.

    The hooks below are no-ops for one stage; a stream of several overrides them.
    """

    stages: list[FederatedData]
    joint: FederatedData
    num_clients: int

    @property
    def label_names(self) -> list[str]:
        """The class names of the whole stream."""
        return self.joint.label_names

    def stage_data(self, stage: int | None) -> FederatedData:
        """One stage's data (None: all of it)."""
        return self.joint if stage is None else self.stages[stage]

    def stage_of(self, server_round: int) -> int | None:
        """The stage whose data round ``server_round`` trains on; None: the job's only data."""
        return None

    def phases(self, rounds: int, done: int = 0) -> list[tuple[int | None, int]]:
        """(stage, its first round) of each stage the server runs in turn, after the ``done`` rounds of a run
        being resumed."""
        return [(None, done + 1)]

    def active_parties(self, stage: int | None) -> list[int]:
        """Partition ids that take part in ``stage``."""
        return list(range(self.num_clients))

    def prepare(self, model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The round-0 travelling state, once the model is built (a growing head starts small)."""
        return state

    def fit(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Shape ``model`` for ``state`` before it is loaded (a grown head gets its rows)."""

    def local_round(self, job: Job, workspace: Any, index: int, stage: int, node_state: RecordDict,
                    batches: Iterable[dict], steps: int, seed: int) -> tuple[Iterable[dict], list[Callable]]:
        """A client's batches and extra loss terms at ``stage`` (replay mixes in its buffer; EWC adds a term)."""
        return batches, []

    def server_loop(self, job: Job, workspace: Any, run: Any) -> Any:
        """The server's side of the stages (what changes between them, what is measured after each), or None."""
        return None


def single_stage(job: Job, data_path: str | None) -> Stream:
    """The stream of a plain job: the source split once; a node's own exported folder, or the server's test set."""
    if data_path:
        data = load_party(data_path)
    elif job.data.test_path:
        data = load_server_test(job.data.test_path)
    else:
        data = split_federated(load_source(job.data), job.data, job.federation.num_clients, job.seed)
    return Stream([data], data, job.federation.num_clients)


STREAMS: Registry[Callable[[Job, str | None], Stream]] = Registry("continual.kind")
"""Stream kinds by ``continual.kind``: each opens the job's stream (a node's ``data_path`` when it has one)."""
STREAMS.register("none", single_stage)


def open_stream(job: Job, data_path: str | None = None) -> Stream:
    """The job's stream, as ``continual.kind`` names it."""
    return STREAMS[job.continual.kind](job, data_path)
