"""Per-class head aggregation (task.head_aggregation=per_class): each class's head row is the mean of the rows
of the parties that hold the class, weighted by their counts of it; everything else is the rule's aggregate."""

from __future__ import annotations

import pytest
import torch
from conftest import checkpoint_state
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from ffm.config import ConfigError, load_job
from ffm.run_dir import RunDirectory
from ffm.runtime import run_local, set_task_identity
from ffm.server import build_strategy, streams
from ffm.strategies.class_head import CLASS_COUNTS, PerClassHead, per_class_rows


@pytest.fixture(autouse=True)
def _identity():
    set_task_identity(run_id=1)


def _reply(node: int, state: dict[str, torch.Tensor], counts: list[int]) -> Message:
    instruction = Message(RecordDict({"config": ConfigRecord({})}), node, MessageType.TRAIN)
    instruction.metadata.__dict__["_message_id"] = f"m{node}"
    instruction.metadata.__dict__["_src_node_id"] = 0
    metrics = MetricRecord({"num-examples": sum(counts), "train-loss": 1.0, CLASS_COUNTS: counts})
    reply = Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def test_each_row_is_the_mean_over_the_parties_holding_its_class_weighted_by_their_counts():
    rows = [torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), torch.tensor([[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]])]
    counts = torch.tensor([[3, 0, 0], [1, 4, 0]])  # class 1: party 2 alone; class 2: nobody
    fallback = torch.full((3, 2), -1.0)

    out = per_class_rows(rows, counts, fallback)

    assert out.tolist() == [[2.0, 2.0], [6.0, 6.0], [-1.0, -1.0]]  # (3*1 + 1*5) / 4; party 2's row; kept


def test_the_wrapper_replaces_only_the_heads_rows_of_fedavgs_aggregate():
    head = "classifier.modules_to_save.default.weight"
    states = [{head: torch.tensor([[1.0], [10.0]]), "classifier.bias": torch.tensor([0.0, 2.0]),
               "encoder.w": torch.tensor([1.0, 1.0])},
              {head: torch.tensor([[3.0], [20.0]]), "classifier.bias": torch.tensor([4.0, 6.0]),
               "encoder.w": torch.tensor([3.0, 5.0])}]
    replies = [_reply(1, states[0], [2, 0]), _reply(2, states[1], [2, 4])]  # 2 and 6 examples
    strategy = build_strategy(load_job(None, ["federation.fraction_evaluate=0", "task.head_aggregation=per_class"]))

    arrays, metrics = strategy.aggregate_train(1, replies)
    out = arrays.to_torch_state_dict()

    assert isinstance(strategy, PerClassHead)
    assert out["encoder.w"].tolist() == [2.5, 4.0]  # FedAvg's: (2 * w1 + 6 * w2) / 8
    assert out[head].tolist() == [[2.0], [20.0]]  # class 0: (2*1 + 2*3) / 4; class 1: party 2's alone
    assert out["classifier.bias"].tolist() == [2.0, 6.0]
    assert CLASS_COUNTS not in metrics


def test_a_federated_run_sends_label_counts_and_changes_only_the_head_of_the_first_aggregate(job_factory):
    # Prepare: after round 1 every tensor but the head is the same mean of the same local states (both runs
    # average the replies at the end: a running sum would round differently)
    skewed = {"federation__rounds": 1, "data__partitioner": "dirichlet", "data__alpha": 0.1,
              "federation__fraction_evaluate": 0.0, "method__name": "full", "federation__streaming": False}
    plain = job_factory("plain", **skewed)
    per_class = job_factory("per_class", **skewed, task__head_aggregation="per_class")

    # Execute
    run_local(plain)
    run_local(per_class)

    # Assert: each party's counts add up to the examples it trained on; only the head's tensors differ
    line = RunDirectory(per_class.run_dir).read_metrics()[1]
    assert [sum(c["class_counts"]) for c in line["clients"]] == [c["num_examples"] for c in line["clients"]]
    assert any(0 in c["class_counts"] for c in line["clients"])  # label skew: a party lacks a class
    a, b = checkpoint_state(plain.run_dir, 1), checkpoint_state(per_class.run_dir, 1)
    differ = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert differ and all("classifier" in k for k in differ)


def test_a_centralized_run_is_bit_identical_with_and_without_it(job_factory):
    # one party: the weighted mean of its own rows is its rows (bench/convergence.py pairs on this)
    pooled = {"mode": "centralized", "federation__rounds": 2, "federation__fraction_evaluate": 0.0}
    plain, per_class = job_factory("plain", **pooled), job_factory("per_class", **pooled,
                                                                     task__head_aggregation="per_class")

    run_local(plain)
    run_local(per_class)

    a, b = checkpoint_state(plain.run_dir, 2), checkpoint_state(per_class.run_dir, 2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = RunDirectory(per_class.run_dir).read_metrics()[1:]
    assert len(lines) == 2 and all(ln["clients"] for ln in lines)
    assert all(c["class_counts"] for ln in lines for c in ln["clients"])  # the per-class path ran, on one party


def test_per_class_aggregation_reads_each_reply_so_replies_are_not_streamed():
    assert streams(load_job(None, ["federation.streaming=true"]))
    assert not streams(load_job(None, ["federation.streaming=true", "task.head_aggregation=per_class"]))


@pytest.mark.parametrize(("keys", "message"), [
    (["strategy.name=scaffold"], r"strategy\.name=scaffold is not one"),
    (["privacy.secure_aggregation=true"], r"privacy\.secure_aggregation=true exists to keep"),
    (["privacy.clipping=fixed", "privacy.noise_multiplier=0.5"], r"privacy\.clipping=fixed exists to keep"),
    (["privacy.dp_sgd=true"], r"privacy\.dp_sgd=true exists to keep"),
    (["method.name=fedkseed"], r"sends step records instead of a state"),
    (["task.head_aggregation=rows"], r"task\.head_aggregation"),
])
def test_per_class_aggregation_refuses_what_hides_the_parties_rows_with_a_one_line_error(keys, message):
    with pytest.raises(ConfigError, match=message):
        load_job(None, ["task.head_aggregation=per_class", *keys] if keys[0] != "task.head_aggregation=rows"
                 else keys)
