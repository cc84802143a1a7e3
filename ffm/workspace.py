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

from ffm.data import FederatedData, Stream, open_stream, pooled
from ffm.errors import DataError
from ffm.keys import is_base_delta
from ffm.methods import build_method
from ffm.methods.lora_federation import apply_base_delta
from ffm.models import load_tokenizer, load_trainable_state, split_personal, trainable_state
from ffm.privacy.dp_sgd import check_supported
from ffm.settings import Job, to_dict
from ffm.tasks import Examples, Task, build_task, ensure_pad_token, steps_per_epoch

__all__ = ["Workspace", "build_workspace", "check_data", "workspace_for"]


@dataclass
class Workspace:
    """The shared model, its tokenizer and task, and the data stream this process holds for one job."""

    job: Job
    task: Task
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase | None  # None for tasks that read no text
    stream: Stream  # the parties' data, stage by stage (one stage for a plain job)
    initial_state: dict[str, torch.Tensor]  # the round-0 global state: what travels
    initial_personal: dict[str, torch.Tensor]  # a client's personal part before it first trains
    _examples: dict[tuple[str, int, int], Examples] = field(default_factory=dict, repr=False)
    _pristine_base: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # before any base delta

    @property
    def data(self) -> FederatedData:
        """All of the stream's data at once (a plain job's only data)."""
        return self.stream.joint

    @property
    def num_parties(self) -> int:
        """Parties that train: the clients, or one data holder in centralized mode."""
        return 1 if self.job.mode.pools_data else len(self.data.clients)

    def stage_data(self, stage: int | None) -> FederatedData:
        """One stage's data of the stream (None: all of it)."""
        return self.stream.stage_data(stage)

    def _party(self, stage: int | None) -> FederatedData:
        data = self.stage_data(stage)
        if not self.job.mode.pools_data:
            return data
        return pooled(data, self.stream.active_parties(stage))

    def examples(self, split: str, party: int = 0, stage: int | None = None) -> Examples:
        """Encoded ``train`` / ``val`` of a party, or the global ``test`` (of a continual ``stage``, or of all
        the data); encoded once, then reused."""
        key = (split, party if split != "test" else -1, -1 if stage is None else stage)
        if key not in self._examples:
            data = self.stage_data(stage)
            if split == "test" and data.test is None:
                raise ValueError("this process holds one data owner's data and no test set")
            ds = data.test if split == "test" else getattr(self._party(stage).clients[party], split)
            encode = self.task.encode_train if split == "train" else self.task.encode
            self._examples[key] = encode(ds, self.tokenizer, self.job.model.max_length)
        return self._examples[key]

    def load(self, state: dict[str, torch.Tensor], personal: dict[str, torch.Tensor] | None = None) -> None:
        """Put a travelling state into the shared model, with a personal part (default: the initial one).

        Entries named ``base-delta:...`` (exact LoRA aggregation) go into the frozen base weights, on top of
        their pristine values; a state without them restores the pristine base.
        """
        personal = self.initial_personal if personal is None else personal
        self.stream.fit(self.model, {**state, **personal})  # e.g. a grown head gets its rows
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
        if not self.job.mode.pools_data:
            if train.local_steps:
                return train.local_steps
            return train.local_epochs * steps_per_epoch(len(data.clients[party].train), train.batch_size)
        clients = [data.clients[p] for p in self.stream.active_parties(stage)]
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


def check_data(job: Job) -> None:
    """Load and split the job's data and check its columns, without a model: what a study checks for each of its
    conditions before it writes anything."""
    _check_schema(open_stream(job).joint, build_task(job.task))


def build_workspace(job: Job, data_path: str | None = None) -> Workspace:
    """Load data and model: the whole stream, one party's folder (``data_path``), or the server's test set.

    Data loads first, so bad data fails before a model loads.
    """
    task = build_task(job.task)
    stream = open_stream(job, data_path)
    data = stream.joint
    _check_schema(data, task)
    tokenizer = load_tokenizer(job.model) if task.uses_tokenizer else None
    backbone = task.build_model(job.model, data.label_names, tokenizer, job.seed)
    if tokenizer is not None:
        ensure_pad_token(tokenizer, backbone)
    method = build_method(job.method)
    model = method.apply(backbone, task)
    if data_path is not None:  # a node with its own data alone: it keeps only what it runs (an emulator)
        model = method.for_node(model)
    if job.privacy.dp_sgd:
        check_supported(model, job.method.name)
    for name, param in model.named_parameters():
        if any(prefix in name for prefix in task.frozen_prefixes):
            param.requires_grad_(False)  # e.g. a LiT text tower: it neither trains nor travels
    if job.model.init_from:
        _load_run_state(model, job.model.init_from)
    task.prepare(model)  # e.g. DPO keeps the initial model as its reference
    # The model is shared and mutated by training, so keep a pristine copy of the round-0 state.
    state = stream.prepare(model, trainable_state(model))  # e.g. a growing head starts small
    shared, personal = split_personal(state, job.method.personal)
    return Workspace(job, task, model, tokenizer, stream, initial_state=shared, initial_personal=personal)


def _load_run_state(model: nn.Module, run_dir: str) -> None:
    """The trainable state of another run's last checkpoint, into ``model`` (the run starts from it)."""
    from ffm.run_dir import RunDirectory

    checkpoint = RunDirectory(run_dir).latest_checkpoint()
    if checkpoint is None:
        raise DataError(f"model.init_from='{run_dir}' holds no checkpoint; pass a finished run's directory")
    try:
        load_trainable_state(model, checkpoint["state"])
    except ValueError as exc:
        raise DataError(f"model.init_from='{run_dir}' is a run of another model or method ({exc}); pass a run "
                        "of the same model, task and method") from None


def _shaping_key(job: Job) -> str:
    """The config keys that shape model and data (not rounds, paths, strategy or progress)."""
    raw = to_dict(job)
    shaping = {k: raw[k] for k in ("mode", "seed", "model", "task", "method", "data", "train", "continual")}
    shaping["num_clients"] = job.federation.num_clients
    shaping["fraction_train"] = job.federation.fraction_train
    return json.dumps(shaping, sort_keys=True)


# One slot: a process serves one job at a time; a new job's workspace replaces the old (frees its model).
_SLOT: dict[str, Workspace] = {}


def workspace_for(job: Job, data_path: str | None = None) -> Workspace:
    """The process's Workspace for ``job`` (and a node's own ``data_path``): built on first use, then shared."""
    key = f"{_shaping_key(job)}|{data_path or ''}"
    if key not in _SLOT:
        _SLOT.clear()
        _SLOT[key] = build_workspace(job, data_path)
    return _SLOT[key]
