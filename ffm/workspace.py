"""What one process holds for a job: ONE frozen backbone and the data, shared by every virtual client.

A Flower ClientApp is called with only ``(message, context)``, so the ClientApp finds its model and data
through :func:`workspace_for`, a per-process cache keyed by the parts of the config that shape them. In
simulation all virtual nodes (and the server's evaluation) share one Workspace that holds the whole split.
In a deployment a SuperNode names its own data folder (node config ``data-path``) and its Workspace holds
that party's examples alone; the ServerApp's holds only the test set (``data.test_path``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import datasets
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ffm.config import JobConfig, job_to_dict
from ffm.continual.head import fit_head, head_keys, shrink_head
from ffm.continual.stream import active_parties, joint_data, split_stream, stage_classes
from ffm.data import FederatedData, load_party, load_server_test, load_source, pooled, split_federated
from ffm.errors import DataError
from ffm.methods import build_method
from ffm.methods.lora_federation import apply_base_delta, is_base_delta
from ffm.models import load_tokenizer, load_trainable_state, split_personal, trainable_state
from ffm.tasks import Examples, Task, build_task, ensure_pad_token, steps_per_epoch

__all__ = ["Workspace", "build_workspace", "workspace_for"]


@dataclass
class Workspace:
    job: JobConfig
    task: Task
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase | None  # None for tasks that read no text
    data: FederatedData
    initial_state: dict[str, torch.Tensor]  # the round-0 global state: what travels
    initial_personal: dict[str, torch.Tensor]  # a client's personal part before it first trains
    stages: list[FederatedData] = field(default_factory=list)  # a continual stream's data, stage by stage
    head_keys: list[str] = field(default_factory=list)  # class-incremental: the head's per-class tensors
    full_head: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # ... with every class's rows
    _examples: dict[tuple[str, int, int], Examples] = field(default_factory=dict, repr=False)
    _pristine_base: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # before any base delta

    @property
    def num_parties(self) -> int:
        """Parties that train: the clients, or one data holder in centralized mode."""
        return 1 if self.job.mode == "centralized" else len(self.data.clients)

    def stage_data(self, stage: int | None) -> FederatedData:
        """One stage's data of a continual stream (None: all of it, the joint data)."""
        return self.data if stage is None else self.stages[stage]

    def _party(self, stage: int | None) -> FederatedData:
        data = self.stage_data(stage)
        if self.job.mode != "centralized":
            return data
        return pooled(data, active_parties(self.job, stage))

    def examples(self, split: str, party: int = 0, stage: int | None = None) -> Examples:
        """Encoded ``train`` / ``val`` of a party, or the global ``test`` (of a continual ``stage``, or of all
        the data); encoded once, then reused."""
        key = (split, party if split != "test" else -1, -1 if stage is None else stage)
        if key not in self._examples:
            data = self.stage_data(stage)
            if split == "test" and data.test is None:
                raise ValueError("this process holds one data owner's data and no test set")
            ds = data.test if split == "test" else getattr(self._party(stage).clients[party], split)
            self._examples[key] = self.task.encode(ds, self.tokenizer, self.job.model.max_length)
        return self._examples[key]

    def load(self, state: dict[str, torch.Tensor], personal: dict[str, torch.Tensor] | None = None) -> None:
        """Put a travelling state into the shared model, with a personal part (default: the initial one).

        Entries named ``base-delta:...`` (exact LoRA aggregation) go into the frozen base weights, on top of
        their pristine values; a state without them restores the pristine base.
        """
        personal = self.initial_personal if personal is None else personal
        if self.head_keys:  # a class-incremental head has as many rows as the classes seen so far
            fit_head(self.model, {**state, **personal}, self.head_keys)
        deltas = {k: v for k, v in state.items() if is_base_delta(k)}
        if deltas or self._pristine_base:
            apply_base_delta(self.model, deltas, self._pristine_base)
            state = {k: v for k, v in state.items() if not is_base_delta(k)}
        load_trainable_state(self.model, state, partial=bool(personal))
        if personal:
            load_trainable_state(self.model, personal, partial=True)

    def local_steps(self, party: int, stage: int | None = None) -> int:
        """Optimizer steps a party takes per round; centralized gets the federation's whole round budget."""
        train = self.job.train
        fed = self.job.federation
        data = self.stage_data(stage)
        if self.job.mode != "centralized":
            if train.local_steps:
                return train.local_steps
            return train.local_epochs * steps_per_epoch(len(data.clients[party].train), train.batch_size)
        clients = [data.clients[p] for p in active_parties(self.job, stage)]
        sampled = max(1, int(len(clients) * fed.fraction_train))
        if train.local_steps:
            return train.local_steps * sampled
        per_epoch = sum(steps_per_epoch(len(c.train), train.batch_size) for c in clients)
        return max(1, round(train.local_epochs * per_epoch * sampled / len(clients)))


def _check_schema(data: FederatedData, task: Task) -> None:
    """The task names the columns its data must have; say which are missing, and from where."""
    splits: list[datasets.Dataset] = [c.train for c in data.clients[:1]] + ([data.test] if data.test else [])
    for ds in splits:
        missing = [column for column in task.columns if column not in ds.column_names]
        if missing:
            raise DataError(
                f"task.name={task.cfg.name} needs the columns {list(task.columns)}, but the data has "
                f"{ds.column_names} (missing {missing}); choose another data.source or task.name"
            )


def _load_data(job: JobConfig, data_path: str | None) -> tuple[FederatedData, list[FederatedData]]:
    """(the data, a continual stream's stages; for the joint upper bound and reports, data = every stage)."""
    if data_path:
        if job.continual.kind != "none":
            raise DataError(f"continual.kind={job.continual.kind}: a node's exported folder ('{data_path}') holds no "
                            "stages; start the SuperNodes without data-path (each builds its own split of the stream)")
        return load_party(data_path), []
    if job.data.test_path:
        return load_server_test(job.data.test_path), []
    if job.continual.kind != "none":
        stages = split_stream(load_source(job.data), job)
        return joint_data(stages), stages
    return split_federated(load_source(job.data), job.data, job.federation.num_clients, job.seed), []


def build_workspace(job: JobConfig, data_path: str | None = None) -> Workspace:
    """Load data and model: the whole split, one party's folder (``data_path``), or the server's test set.

    Data loads first, so bad data fails before a model loads.
    """
    task = build_task(job.task)
    data, stages = _load_data(job, data_path)
    _check_schema(data, task)
    tokenizer = load_tokenizer(job.model) if task.uses_tokenizer else None
    backbone = task.build_model(job.model, data.label_names, tokenizer, job.seed)
    if tokenizer is not None:
        ensure_pad_token(tokenizer, backbone)
    model = build_method(job.method).apply(backbone, task)
    if job.privacy.dp_sgd:
        from ffm.dp_sgd import check_supported

        check_supported(model, job.method.name)
    for name, param in model.named_parameters():
        if any(prefix in name for prefix in task.frozen_prefixes):
            param.requires_grad_(False)  # e.g. a LiT text tower: it neither trains nor travels
    if job.mode == "prompt_search" and job.search.init_from:
        _load_run_state(model, job.search.init_from)
    # The model is shared and mutated by training, so keep a pristine copy of the round-0 state.
    state = trainable_state(model)
    keys: list[str] = []
    full: dict[str, torch.Tensor] = {}
    if job.continual.kind == "class_incremental" and job.continual.method != "joint":
        keys = head_keys(state, len(data.label_names))
        if not keys:
            raise DataError(f"continual.kind=class_incremental: method.name={job.method.name} trains no "
                            "classification head to grow (its head must be trainable)")
        full = {k: state[k].clone() for k in keys}
        state = shrink_head(state, keys, stage_classes(job, data.label_names)[0])
        fit_head(model, state, keys)
    shared, personal = split_personal(state, job.method.personal)
    return Workspace(job, task, model, tokenizer, data, initial_state=shared, initial_personal=personal,
                     stages=stages, head_keys=keys, full_head=full)


def _load_run_state(model: nn.Module, run_dir: str) -> None:
    """The trainable state of another run's last checkpoint, into ``model`` (the search scores that model)."""
    from ffm.run_dir import RunDirectory

    checkpoint = RunDirectory(run_dir).latest_checkpoint()
    if checkpoint is None:
        raise DataError(f"search.init_from='{run_dir}' holds no checkpoint; pass a finished run's directory")
    try:
        load_trainable_state(model, checkpoint["state"])
    except ValueError as exc:
        raise DataError(f"search.init_from='{run_dir}' is a run of another model or method ({exc}); pass a run "
                        "of the same model, task and method") from None


def _shaping_key(job: JobConfig) -> str:
    """The config keys that shape model and data (not rounds, paths, strategy or progress)."""
    raw = job_to_dict(job)
    shaping = {k: raw[k] for k in ("mode", "seed", "model", "task", "method", "data", "train", "continual")}
    shaping["num_clients"] = job.federation.num_clients
    shaping["fraction_train"] = job.federation.fraction_train
    return json.dumps(shaping, sort_keys=True)


# One slot: a process serves one job at a time; a new job's workspace replaces the old (frees its model).
_SLOT: dict[str, Workspace] = {}


def workspace_for(job: JobConfig, data_path: str | None = None) -> Workspace:
    """The process's Workspace for ``job`` (and a node's own ``data_path``): built on first use, then shared."""
    key = f"{_shaping_key(job)}|{data_path or ''}"
    if key not in _SLOT:
        _SLOT.clear()
        _SLOT[key] = build_workspace(job, data_path)
    return _SLOT[key]
