"""The ClientApp: the only place gradients are taken, and the same object on every Grid.

A node learns which data it owns from its node config (``partition-id``); the job from the run config.
It loads the received trainable state into the process's shared backbone, trains or evaluates on its own
partition, and replies with its new trainable state and metrics. It never learns which Grid carried it.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ffm.config import job_from_run_config
from ffm.models import load_trainable_state, trainable_state
from ffm.strategies.offset import round_seed
from ffm.tasks import evaluate as evaluate_examples
from ffm.tasks import train_steps
from ffm.workspace import Workspace, workspace_for

__all__ = ["app"]

app = ClientApp()


def _prepare(msg: Message, context: Context) -> tuple[Workspace, int, int]:
    """The workspace with the received state loaded; (index of this node's data in it, its partition id).

    A node with ``data-path`` in its node config holds its own folder alone (index 0); otherwise (simulation)
    the workspace holds every partition and the node's is at ``partition-id``.
    """
    data_path = context.node_config.get("data-path")
    workspace = workspace_for(job_from_run_config(context.run_config), str(data_path) if data_path else None)
    partition = int(context.node_config.get("partition-id", 0))
    index = 0 if data_path else partition
    if not 0 <= index < workspace.num_parties:
        raise ValueError(f"partition-id {partition} is outside 0..{workspace.num_parties - 1}")
    arrays = next(iter(msg.content.array_records.values()))
    load_trainable_state(workspace.model, arrays.to_torch_state_dict())
    return workspace, index, partition


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local steps on this node's training split, from the received global state."""
    workspace, index, party = _prepare(msg, context)
    job = workspace.job
    server_round = int(msg.content["config"]["server-round"])
    data = workspace.examples("train", index)
    loss, seen = train_steps(
        workspace.model,
        data,
        steps=workspace.local_steps(index),
        batch_size=job.train.batch_size,
        lr=job.train.lr,
        weight_decay=job.train.weight_decay,
        seed=round_seed(job.seed, server_round, salt=1000 + party),
    )
    reply = RecordDict(
        {
            "arrays": ArrayRecord(trainable_state(workspace.model)),
            "metrics": MetricRecord({"num-examples": len(data), "train-loss": loss, "examples-seen": seen}),
            "client": ConfigRecord({"partition-id": party}),
        }
    )
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the received state on this node's own validation split."""
    workspace, index, party = _prepare(msg, context)
    result = evaluate_examples(workspace.model, workspace.examples("val", index), workspace.job.train.eval_batch_size)
    metrics = MetricRecord(
        {"num-examples": result["num-examples"], "val-loss": result["loss"], "val-accuracy": result["accuracy"]}
    )
    reply = RecordDict({"metrics": metrics, "client": ConfigRecord({"partition-id": party})})
    return Message(reply, reply_to=msg)
