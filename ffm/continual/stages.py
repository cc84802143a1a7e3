"""The server's side of a stream: the stages of rounds, what changes between them, and the matrix R.

``run_job`` trains each stage as ``federation.rounds / continual.stages`` rounds of the usual strategy. Before
a stage the global state gets the new classes' head rows (class-incremental), or a fresh adapter
(``continual.approach=adapters``), and the Grid shows only the stage's parties (churn: a joining party simply
receives the current global state). After a stage the model is evaluated on every stage's test set (the row
``R[stage]``) and, for the per-party view, on every party's validation split of every stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from ffm.carrier import Carrier
from ffm.continual.head import grow_head
from ffm.continual.matrix import plot_matrix, transfer
from ffm.continual.stream import active_parties, stage_classes, stage_index, stage_rounds
from ffm.grid_view import NodeSubset
from ffm.run_dir import RunDirectory
from ffm.settings import Job
from ffm.tasks import Examples

if TYPE_CHECKING:
    from ffm.workspace import Workspace

__all__ = ["StageLoop"]

Models = dict[int | None, dict[str, torch.Tensor]]  # the global state (key None) or each party's own


class StageLoop:
    """One continual job's stages: their rounds, the changes between them, and the accuracy matrix."""

    def __init__(self, job: Job, workspace: Workspace, run: RunDirectory) -> None:
        self.job, self.ws, self.run = job, workspace, run
        self.c = job.continual
        self.per_stage = stage_rounds(job)
        self.metric = workspace.task.primary_metric
        self.head_keys: list[str] = workspace.stream.head_keys
        self.grows = bool(self.head_keys)  # class-incremental: the head has the seen classes' rows
        self.classes = stage_classes(job, workspace.data.label_names) if self.c.kind == "class_incremental" else []
        self.rows: list[list[float]] = []
        self.initial: list[float] | None = None
        self.party_rows: dict[int, list[list[float]]] = {}
        self.snapshots: list[Models] = []  # adapters: each stage's final state(s)
        self._cache: dict[tuple[str, int, int], Examples] = {}

    # --- the stages' rounds -------------------------------------------------------------------------------
    def phases(self) -> list[tuple[int, int]]:
        """(stage, its first round) of each stage."""
        return [(k, k * self.per_stage + 1) for k in range(self.c.stages)]

    def grid(self, grid: Grid, stage: int, carrier: Carrier) -> Grid:
        """The Grid of ``stage``: only its parties' nodes when parties come and go."""
        if not self.c.parties or self.job.mode.pools_data:
            return grid
        active = set(active_parties(self.job, stage))
        return NodeSubset(grid, {node for node, pid in carrier.partition_ids(grid).items() if pid in active})

    def begin(self, stage: int, state: dict[str, torch.Tensor], party_states: dict | None) -> dict[str, torch.Tensor]:
        """The global state a stage starts from (new head rows; a fresh adapter); party states likewise."""
        if stage == 0:
            return state
        if self.c.approach == "adapters":
            state = dict(self.ws.initial_state)
            if party_states is not None:
                party_states.clear()  # every party's next adapter starts from the fresh one
        if self.grows:
            rows = self.classes[stage]
            state = grow_head(state, self.ws.stream.full_head, rows)  # the head travels whole (no personal part)
            for pid, arrays in list((party_states or {}).items()):
                party_states[pid] = ArrayRecord(grow_head(arrays.to_torch_state_dict(), self.ws.stream.full_head, rows))
        return state

    # --- evaluation ---------------------------------------------------------------------------------------
    def test_stage(self, true_round: int) -> int | None:
        """Which stage's test set a round's ``test_*`` figures are on (None for the joint model: all)."""
        return None if self.c.approach == "joint" else stage_index(self.job, true_round)

    def _examples(self, split: str, party: int, stage: int) -> Examples:
        if split == "test":
            return self.ws.examples("test", stage=stage)
        key = (split, party, stage)
        if key not in self._cache:  # a party's own split, also in centralized mode (where training pools them)
            ds = self.ws.stream.stages[stage].clients[party].val
            self._cache[key] = self.ws.task.encode(ds, self.ws.tokenizer, self.job.model.max_length)
        return self._cache[key]

    def _score(self, state: dict[str, torch.Tensor], data: Examples, stage: int, routed: bool) -> float:
        """The primary metric of ``state`` on ``data`` of ``stage``; ``routed``: through that stage's own head
        rows only (per-task adapters with a class-incremental head know which stage an example comes from)."""
        if routed and self.grows:
            low, high = (self.classes[stage - 1] if stage else 0), self.classes[stage]
            state = {k: v[low:high] if k in self.head_keys else v for k, v in state.items()}
            data = Examples({**data.tensors, "labels": data.tensors["labels"] - low}, data.lengths,
                            data.sequence_keys)
        self.ws.load(state)
        return float(self.ws.task.evaluate(self.ws.model, data, self.job.train.eval_batch_size)[self.metric])

    def _cell(self, models: Models, owner: int | None, split: str, party: int, stage: int, now: int) -> float:
        """One entry of a row: the model(s) after stage ``now`` on ``stage``'s data."""
        if self.grows and stage > now:
            return 0.0  # its classes are not in the head yet: no prediction can be right
        adapters = self.c.approach == "adapters" and stage <= now
        source = self.snapshots[stage] if adapters and stage < now else models
        state = source.get(owner, source.get(None)) if owner is not None else None
        data = self._examples(split, party, stage)
        if state is not None:
            return self._score(state, data, stage, adapters)
        scores = [self._score(s, data, stage, adapters) for s in source.values()]  # local-only: every party's own
        return sum(scores) / len(scores)

    def _models(self, arrays: ArrayRecord, party_states: dict | None) -> Models:
        if party_states:
            return {pid: a.to_torch_state_dict() for pid, a in sorted(party_states.items())}
        return {None: arrays.to_torch_state_dict()}

    def fields(self, true_round: int, arrays: ArrayRecord, party_states: dict | None) -> dict[str, Any]:
        """What a round's metrics line adds: its stage, and after a stage's last round the row of R."""
        stage = stage_index(self.job, true_round)
        line: dict[str, Any] = {"stage": stage}
        key = f"stage_test_{self.metric}"
        if true_round == 0:
            state = arrays.to_torch_state_dict()
            self.initial = [0.0 if self.grows and j > 0 else self._score(state, self._examples("test", 0, j), j, False)
                            for j in range(self.c.stages)]
            line[f"initial_{key}"] = self.initial
        elif true_round % self.per_stage == 0:
            models = self._models(arrays, party_states)
            if self.c.approach == "adapters":
                self.snapshots.append(models)
            row = [self._cell(models, None, "test", 0, j, stage) for j in range(self.c.stages)]
            self.rows.append(row)
            line[key] = row
            parties = {}
            for pid in range(len(self.ws.stream.stages[0].clients)):
                own = pid if party_states else None
                parties[str(pid)] = [self._cell(models, own, "val", pid, j, stage) for j in range(self.c.stages)]
                self.party_rows.setdefault(pid, []).append(parties[str(pid)])
            line[f"party_stage_val_{self.metric}"] = parties
        return line

    # --- the outcome ----------------------------------------------------------------------------------------
    def final_states(self) -> list[tuple[str, dict[str, torch.Tensor]]]:
        """Models to save beside the final one, by folder name: each stage's own adapter (approach=adapters)."""
        if self.c.approach != "adapters":
            return []
        return [(f"stage-{k}", models[None]) for k, models in enumerate(self.snapshots) if None in models]

    def summary(self) -> dict[str, Any]:
        """R, its summary figures, per party, and the heat map's path."""
        joint = self.c.approach == "joint"
        overall = transfer(self.rows, None if joint or self.initial is None else self.initial)
        if joint:  # trained on every stage from the start: no stage was learnt before another, nothing to forget
            overall["backward_transfer"] = overall["forward_transfer"] = None
        parties = {str(pid): {"R": rows, **transfer(rows)} for pid, rows in self.party_rows.items()}
        if parties and not joint:
            overall["party_mean_backward_transfer"] = sum(
                p["backward_transfer"] for p in parties.values()) / len(parties)
        plot = None
        if self.rows:
            names = {"average": "average", "backward_transfer": "BWT", "forward_transfer": "FWT"}
            figures = ", ".join(f"{names[k]} {v:.3f}" if k == "average" else f"{names[k]} {v:+.3f}"
                                for k, v in overall.items() if isinstance(v, float) and k in names)
            title = f"{self.job.mode}, {self.c.kind}, {self.c.approach}\n{figures}"
            plot = str(plot_matrix(self.rows, self.metric, title, self.run.path / "accuracy_matrix.png"))
        return {"kind": self.c.kind, "approach": self.c.approach, "stages": self.c.stages, "metric": self.metric,
                "higher_is_better": self.ws.task.higher_is_better, "R": self.rows, "initial": self.initial,
                **overall, "parties": parties, "plot": plot,
                "classes": self.classes if self.c.kind == "class_incremental" else None}
