"""The LocalGrid speaks Flower's Message protocol to the very ClientApp a SuperNode would load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.utils import get_load_client_app_fn

import ffm.client
from ffm.config import job_to_run_config
from ffm.runtime import LocalGrid, set_task_identity
from ffm.workspace import workspace_for

REPO = Path(__file__).resolve().parents[1]


def _train_message(job, node_id: int) -> Message:
    workspace = workspace_for(job)
    content = RecordDict(
        {"arrays": ArrayRecord(workspace.initial_state), "config": ConfigRecord({"server-round": 1})}
    )
    return Message(content, node_id, MessageType.TRAIN, group_id="1")


def test_flower_task_identity_is_where_ffm_sets_it():
    # ffm sets flwr's process identity in one place; if flwr moves it, Message() breaks: fail loudly here.
    from flwr.supercore.task_identity import TaskIdentity

    set_task_identity(run_id=7)

    assert (TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id) == (7, 0, 0)
    assert Message(RecordDict(), 1, MessageType.TRAIN).metadata.run_id == 7


def test_the_client_app_a_supernode_loads_answers_a_train_message(job_factory):
    # A SuperNode loads the ClientApp by the reference in pyproject.toml ([tool.flwr.app.components]).
    job = job_factory()
    set_task_identity(run_id=1)
    loaded = get_load_client_app_fn("ffm.client:app", str(REPO), multi_app=False)("", "", "")
    context = Context(1, 2, {"partition-id": 1, "num-partitions": 3}, RecordDict(), job_to_run_config(job))
    msg = _train_message(job, node_id=2)
    msg.metadata.__dict__["_message_id"] = "m-1"

    reply = loaded(msg, context)

    assert not reply.has_error()
    assert reply.metadata.reply_to_message_id == "m-1"
    sent = msg.content["arrays"].to_torch_state_dict()
    got = reply.content["arrays"].to_torch_state_dict()
    assert got.keys() == sent.keys()
    assert any(not torch.equal(got[k], sent[k]) for k in sent)  # it trained
    assert reply.content["metrics"]["num-examples"] == len(workspace_for(job).data.clients[1].train)
    assert reply.content["client"]["partition-id"] == 1


def test_local_grid_gives_each_node_its_partition_and_counts_bytes_both_ways(job_factory):
    job = job_factory()
    grid = LocalGrid(ffm.client.app, num_nodes=3, run_config=job_to_run_config(job))

    replies = list(grid.send_and_receive([_train_message(job, node) for node in grid.get_node_ids()]))

    assert sorted(r.content["client"]["partition-id"] for r in replies) == [0, 1, 2]
    one_state = sum(len(a.data) for a in ArrayRecord(workspace_for(job).initial_state).values())
    assert grid.bytes_down == 3 * one_state
    assert grid.bytes_up == 3 * one_state


def test_a_client_app_that_raises_becomes_an_error_reply_not_a_crash(job_factory):
    job = job_factory()
    grid = LocalGrid(ffm.client.app, num_nodes=3, run_config=job_to_run_config(job))
    bad = _train_message(job, node_id=1)
    bad.content["config"] = ConfigRecord({})  # no server-round: the client's handler raises

    (reply,) = grid.send_and_receive([bad])

    assert reply.has_error()
    assert "server-round" in reply.error.reason


def test_a_message_to_an_unknown_node_is_refused(job_factory):
    grid = LocalGrid(ffm.client.app, num_nodes=2, run_config=job_to_run_config(job_factory()))

    with pytest.raises(ValueError, match="no virtual node 9"):
        grid.push_messages([Message(RecordDict(), 9, MessageType.TRAIN)])
