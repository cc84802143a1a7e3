"""The ClientApp: the only place gradients are taken, and the same object on every Grid.

A node learns which data it owns from its node config (``partition-id``); the job from the run config.
It loads the received trainable state (the record named ``arrays``) into the process's shared backbone,
adds its personal part from its node state, trains or evaluates on its own partition, and replies with the
travelling part of its new state and its metrics. The mods the job names run around it (``ffm.mods``).
It never learns which Grid carried it.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ffm.config import job_from_run_config
from ffm.local_training import make_optimizer, run_scheduler, train_steps
from ffm.models import split_personal, trainable_state
from ffm.mods import job_mods
from ffm.strategies import ARRAYS_KEY, METRICS_KEY, STRATEGIES, round_seed
from ffm.tasks import step_batches
from ffm.workspace import Workspace, workspace_for

__all__ = ["app"]

app = ClientApp(mods=[job_mods])

PERSONAL_KEY = "personal"  # the node state's record of the parameters that never leave this client


def _workspace(context: Context) -> tuple[Workspace, int, int]:
    """The workspace; (index of this node's data in it, its partition id).

    A node with ``data-path`` in its node config holds its own folder alone (index 0); otherwise (simulation)
    the workspace holds every partition and the node's is at ``partition-id``.
    """
    data_path = context.node_config.get("data-path")
    workspace = workspace_for(job_from_run_config(context.run_config), str(data_path) if data_path else None)
    partition = int(context.node_config.get("partition-id", 0))
    index = 0 if data_path else partition
    if not 0 <= index < workspace.num_parties:
        raise ValueError(f"partition-id {partition} is outside 0..{workspace.num_parties - 1}")
    return workspace, index, partition


def _load(workspace: Workspace, msg: Message, context: Context) -> dict[str, torch.Tensor]:
    """Load the received global state and this node's personal part; return the global state."""
    received = msg.content[ARRAYS_KEY].to_torch_state_dict()
    mine = context.state[PERSONAL_KEY].to_torch_state_dict() if PERSONAL_KEY in context.state.array_records else None
    workspace.load(received, mine)
    return received


def _client_record(party: int) -> ConfigRecord:
    return ConfigRecord({"partition-id": party})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local steps on this node's training split, from the received global state."""
    workspace, index, party = _workspace(context)
    job, model = workspace.job, workspace.model
    global_state = _load(workspace, msg, context)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    seed = round_seed(job.seed, server_round, salt=1000 + party)  # fixes shuffling and dropout (resume relies on it)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = workspace.examples("train", index)
    steps = workspace.local_steps(index)
    optimizer = make_optimizer(model, job.train.lr, job.train.weight_decay)
    scheduler = run_scheduler(optimizer, kind=job.train.scheduler, warmup_ratio=job.train.warmup_ratio, steps=steps,
                              server_round=server_round, rounds=job.federation.rounds)
    loss, seen = train_steps(
        model,
        step_batches(data, job.train.batch_size, steps, generator),
        objective=workspace.task.loss,
        optimizer=optimizer,
        scheduler=scheduler,
        penalties=STRATEGIES[job.strategy.name].client_penalties(config, model, global_state),
        max_grad_norm=job.train.max_grad_norm,
    )
    shared, personal = split_personal(trainable_state(model), job.method.personal)
    if personal:
        context.state[PERSONAL_KEY] = ArrayRecord(personal)
    reply = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord(shared),
            METRICS_KEY: MetricRecord({"num-examples": len(data), "train-loss": loss, "examples-seen": seen}),
            "client": _client_record(party),
        }
    )
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The task's metrics of the received state (with this node's personal part) on its own validation split."""
    workspace, index, party = _workspace(context)
    _load(workspace, msg, context)
    job = workspace.job
    result = workspace.task.evaluate(workspace.model, workspace.examples("val", index), job.train.eval_batch_size)
    metrics = MetricRecord({k if k == "num-examples" else f"val-{k}": v for k, v in result.items()})
    return Message(RecordDict({METRICS_KEY: metrics, "client": _client_record(party)}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which data owner this node is (a reply without tensors; the local-only baseline asks it after a resume)."""
    party = int(context.node_config.get("partition-id", 0))
    return Message(RecordDict({"client": _client_record(party)}), reply_to=msg)
