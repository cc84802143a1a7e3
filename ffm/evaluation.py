"""Global evaluation: the task's metrics of a state on the held-out test set, named ``test_<metric>``.

For the local-only baseline every party's own model is evaluated and the metrics are averaged, with the
primary metric also given per party.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord

from ffm.methods import build_method
from ffm.workspace import Workspace

__all__ = ["Evaluator"]


def _named(result: dict[str, float], form: str = "") -> dict[str, float]:
    """``test_<metric>``, or ``test_<form>_<metric>`` for another form of the global model."""
    prefix = f"test_{form}_" if form else "test_"
    return {f"{prefix}{k.replace('-', '_')}": v for k, v in result.items() if k != "num-examples"}


class Evaluator:
    """Evaluate trainable states with the job's task, on the process's one shared model."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.primary = f"test_{workspace.task.primary_metric}"

    def state(self, state: dict[str, torch.Tensor], stage: int | None = None) -> dict[str, float]:
        """Metrics of one global state (with the initial personal part, if the method keeps one), on the test
        set, or on that of a continual ``stage``."""
        ws = self.workspace
        ws.load(state)
        return ws.task.evaluate(ws.model, ws.examples("test", stage=stage), ws.job.train.eval_batch_size)

    def named(self, state: dict[str, torch.Tensor], name: str, stage: int | None = None) -> dict[str, float]:
        """The ``test_<name>_*`` figures of another form of the global model (``federation.ema``'s average)."""
        return _named(self.state(state, stage), name)

    def sample(self) -> str | None:
        """The task's sample from the model as last evaluated (generative tasks only)."""
        return self.workspace.task.sample(self.workspace.model, self.workspace.tokenizer)

    def round(
        self, arrays: ArrayRecord, party_states: dict[int, ArrayRecord] | None, stage: int | None = None
    ) -> dict[str, Any]:
        """The ``test_*`` figures of a round: of the global state, or the mean over the parties' own states."""
        if not party_states:
            line = _named(self.state(arrays.to_torch_state_dict(), stage))
            ws = self.workspace
            for name, view in build_method(ws.job.method).views().items():  # e.g. offsite-tuning's emulator
                with view(ws.model):
                    result = ws.task.evaluate(ws.model, ws.examples("test", stage=stage), ws.job.train.eval_batch_size)
                line.update(_named(result, name))
            return line
        per_party = {pid: _named(self.state(a.to_torch_state_dict(), stage))
                     for pid, a in sorted(party_states.items())}
        keys = next(iter(per_party.values())).keys()
        line: dict[str, Any] = {k: sum(r[k] for r in per_party.values()) / len(per_party) for k in keys}
        line[f"{self.primary}_per_client"] = {str(pid): r[self.primary] for pid, r in per_party.items()}
        return line
