"""The ClientApp: the only place gradients are taken, and the same object on every Grid.

A node learns which data it owns from its node config (``partition-id``); the job from the run config.
It loads the received trainable state (the record named ``arrays``) into the process's shared backbone,
adds its personal part from its node state, trains or evaluates on its own partition, and replies with the
travelling part of its new state and its metrics. The mods the job names run around it (``ffm.mods``).
It never learns which Grid carried it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from contextlib import ExitStack

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ffm.config import JobConfig, job_from_run_config
from ffm.continual.local import continual_round
from ffm.continual.stream import stage_of
from ffm.dp_sgd import dp_sgd_epsilon, dp_sgd_session, poisson_batches
from ffm.local_training import make_optimizer, round_lr_sum, run_scheduler, train_steps
from ffm.methods.lora_federation import RANK_KEY, client_rank, rank_mask_hook, truncate_rank
from ffm.models import split_personal, trainable_state
from ffm.mods import FLIP_LABELS_KEY, job_mods
from ffm.privacy import DP_WEIGHT_KEY
from ffm.prompt_search import CANDIDATES_KEY, scores_reply
from ffm.strategies import ARRAYS_KEY, METRICS_KEY, STRATEGIES, round_seed
from ffm.tasks import step_batches
from ffm.workspace import Workspace, workspace_for

__all__ = ["app"]

app = ClientApp(mods=[job_mods])

PERSONAL_KEY = "personal"  # the node state's record of the parameters that never leave this client
DP_SGD_KEY = "dp-sgd"  # the node state's count of its DP-SGD steps (its own privacy accounting)


def _workspace(context: Context) -> tuple[JobConfig, Workspace, int, int]:
    """This message's job; the workspace; (index of this node's data in it, its partition id).

    A node with ``data-path`` in its node config holds its own folder alone (index 0); otherwise (simulation)
    the workspace holds every partition and the node's is at ``partition-id``. The job is the run config's:
    the shared workspace may have been built for an earlier job that differs in what does not shape it
    (strategy, rounds, mods).
    """
    data_path = context.node_config.get("data-path")
    job = job_from_run_config(context.run_config)
    workspace = workspace_for(job, str(data_path) if data_path else None)
    partition = int(context.node_config.get("partition-id", 0))
    index = 0 if data_path else partition
    if not 0 <= index < workspace.num_parties:
        raise ValueError(f"partition-id {partition} is outside 0..{workspace.num_parties - 1}")
    return job, workspace, index, partition


def _load(workspace: Workspace, msg: Message, context: Context, rank: int | None) -> dict[str, torch.Tensor]:
    """Load the received global state and this node's personal part (truncated to its LoRA ``rank`` in a
    federation of heterogeneous ranks); return the global state."""
    received = msg.content[ARRAYS_KEY].to_torch_state_dict()
    mine = context.state[PERSONAL_KEY].to_torch_state_dict() if PERSONAL_KEY in context.state.array_records else None
    workspace.load(received, mine)
    if rank is not None:
        truncate_rank(workspace.model, rank)
    return received


def _rank(job: JobConfig, party: int) -> int | None:
    """This party's LoRA rank when the job gives clients different ranks, else None."""
    ranks = getattr(job.method, "client_ranks", [])
    return client_rank(ranks, party, job.method.r) if ranks else None


def _client_record(party: int) -> ConfigRecord:
    return ConfigRecord({"partition-id": party})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local steps on this node's training split, from the received global state."""
    job, workspace, index, party = _workspace(context)
    model = workspace.model
    rank = _rank(job, party)
    global_state = _load(workspace, msg, context, rank)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    seed = round_seed(job.seed, server_round, salt=1000 + party)  # fixes shuffling and dropout (resume relies on it)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    stage = stage_of(job, server_round)  # a continual stream's stage (None: the job's only data)
    data = workspace.examples("train", index, stage)
    steps = straggler_steps(workspace.local_steps(index, stage), job.train.steps_spread, seed)
    train = job.train
    optimizer = make_optimizer(model, train.lr, train.weight_decay, train.optimizer, train.momentum)
    schedule = {"kind": train.scheduler, "warmup_ratio": train.warmup_ratio, "steps": steps,
                "server_round": server_round, "rounds": job.federation.rounds}
    rule = STRATEGIES[job.strategy.name].client_rule(msg.content, model, global_state, context.state)
    if rank is not None:  # the components beyond its rank stay zero: it trains a rank-`rank` adapter
        rule.grad_hooks.append(rank_mask_hook(model, rank))
    private = job.privacy.dp_sgd
    sample_rate = min(1.0, train.batch_size / len(data))
    batches = (poisson_batches(data, sample_rate, steps, generator) if private
               else step_batches(data, train.batch_size, steps, generator))
    if config.get(FLIP_LABELS_KEY):  # a label-flipping attacker (mod 'attack'): its own data poisoned
        batches = flip_labels(batches, len(workspace.data.label_names))
    penalties = list(rule.penalties)
    if stage is not None:  # replay mixes in the node's own buffer; EWC adds its penalty
        batches, extra = continual_round(job, workspace, index, stage, context.state, batches, steps, seed)
        penalties += extra
    scheduler = run_scheduler(optimizer, **schedule)
    with ExitStack() as stack:
        trained, stepping = model, optimizer
        if private:  # Opacus's hooks live for this client's round only (the backbone is shared)
            trained, stepping = stack.enter_context(dp_sgd_session(
                model, optimizer, noise_multiplier=job.privacy.sgd_noise_multiplier, clip=job.privacy.sgd_clip,
                expected_batch_size=train.batch_size, seed=seed))
        loss, seen = train_steps(
            trained,
            batches,
            objective=workspace.task.loss,
            optimizer=stepping,
            scheduler=scheduler,
            penalties=penalties,
            grad_hooks=rule.grad_hooks,
            max_grad_norm=0.0 if private else train.max_grad_norm,
            bf16=train.precision == "bf16",
        )
    private_metrics = _dp_sgd_account(job, context, steps, sample_rate) if private else {}
    # The effective learning rate summed over the steps: SCAFFOLD and FedNova normalize updates by it.
    lr_sum = round_lr_sum(train.lr, **schedule) / (1.0 - train.momentum if train.optimizer == "sgd" else 1.0)
    shared, personal = split_personal(trainable_state(model), job.method.personal)
    if personal:
        context.state[PERSONAL_KEY] = ArrayRecord(personal)
    metrics = {"num-examples": len(data), "train-loss": loss, "examples-seen": seen, "local-steps": steps,
               "lr-sum": lr_sum, **({RANK_KEY: rank} if rank is not None else {}),
               **({DP_WEIGHT_KEY: 1} if job.privacy.clipping != "none" else {}), **private_metrics}
    reply = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord(shared),
            METRICS_KEY: MetricRecord(metrics),
            "client": _client_record(party),
            **rule.finish(model, lr_sum),
        }
    )
    return Message(reply, reply_to=msg)


def _dp_sgd_account(job: JobConfig, context: Context, steps: int, sample_rate: float) -> dict[str, float]:
    """Add this round's DP-SGD steps to the node's count; this client's epsilon so far."""
    done = int(context.state[DP_SGD_KEY]["steps"]) if DP_SGD_KEY in context.state.metric_records else 0
    context.state[DP_SGD_KEY] = MetricRecord({"steps": done + steps, "sample-rate": sample_rate})
    return {"dp-sgd-epsilon": dp_sgd_epsilon(done + steps, sample_rate, job.privacy.sgd_noise_multiplier,
                                             job.privacy.delta)}


def straggler_steps(steps: int, spread: float, seed: int) -> int:
    """A straggler's share of its steps this round: uniform in [ceil((1 - spread) * steps), steps]."""
    if spread <= 0.0:
        return steps
    low = max(1, math.ceil((1.0 - spread) * steps))
    return random.Random(seed).randint(low, steps)


def flip_labels(batches: Iterable[dict[str, torch.Tensor]], num_labels: int) -> Iterator[dict[str, torch.Tensor]]:
    """Label y becomes num_labels - 1 - y (the classic label-flipping poisoning attack)."""
    if num_labels < 2:
        raise ValueError("client.attack=label_flip needs a task with class labels")
    for batch in batches:
        yield {**batch, "labels": num_labels - 1 - batch["labels"]}


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The task's metrics of the received state (with this node's personal part) on its own validation split."""
    job, workspace, index, party = _workspace(context)
    _load(workspace, msg, context, _rank(job, party))
    stage = stage_of(job, int(msg.content["config"].get("server-round", 1)))
    result = workspace.task.evaluate(workspace.model, workspace.examples("val", index, stage),
                                     job.train.eval_batch_size)
    metrics = MetricRecord({k if k == "num-examples" else f"val-{k}": v for k, v in result.items()}
                           | ({DP_WEIGHT_KEY: 1} if job.privacy.clipping != "none" else {}))
    return Message(RecordDict({METRICS_KEY: metrics, "client": _client_record(party)}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Replies without tensors: which data owner this node is (the local-only baseline asks it after a resume),
    with the scores of candidate prompts when the message carries some (``mode=prompt_search``)."""
    party = int(context.node_config.get("partition-id", 0))
    content = RecordDict({"client": _client_record(party)})
    if CANDIDATES_KEY in msg.content.config_records:
        _, workspace, index, party = _workspace(context)
        for key, record in scores_reply(workspace, index, msg.content.config_records[CANDIDATES_KEY]).items():
            content[key] = record
    return Message(content, reply_to=msg)
