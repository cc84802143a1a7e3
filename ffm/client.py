"""The ClientApp: the only place gradients are taken, and the same object on every Grid.

A node learns which data it owns from its node config (``partition-id``); the job from the run config.
It loads the received trainable state (the record named ``arrays``) into the process's shared backbone,
adds its personal part from its node state, trains or evaluates on its own partition, and replies with the
travelling part of its new state and its metrics. The mods the job switches on run around it (``ffm.mods``).
It never learns which Grid carried it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from ffm.config import job_from_run_config
from ffm.keys import (
    ARRAYS_KEY,
    CLIENT_KEY,
    CONFIG_KEY,
    DP_SGD_KEY,
    METRICS_KEY,
    OPTIMIZER_KEY,
    PARTITION_ID,
    PERSONAL_KEY,
    SERVER_ROUND,
    Salt,
    derive_seed,
)
from ffm.local_training import (
    TokenCount,
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
    round_lr_sum,
    run_scheduler,
    straggler_steps,
    train_steps,
)
from ffm.methods import PartyAdjustment, build_method
from ffm.models import split_personal, trainable_state
from ffm.mods import FLIP_LABELS_KEY, build_mods
from ffm.node_policy import POLICY_PATH, check_run
from ffm.node_state import NodeStateError, keep_node_state, state_was_lost
from ffm.privacy import reply_metrics
from ffm.privacy.canaries import CANARY, canary_reply
from ffm.privacy.dp_sgd import dp_sgd_epsilon, dp_sgd_session, poisson_batches
from ffm.prompt_search import CANDIDATES_KEY, scores_reply
from ffm.settings import Job
from ffm.strategies import strategy_spec
from ffm.tasks import step_batches
from ffm.workspace import Workspace, workspace_for

__all__ = ["DP_SGD_KEY", "app", "canary_mod", "job_mods", "owner_policy"]

logger = logging.getLogger("ffm")

DATA_PATH = "data-path"  # a SuperNode's node config: the folder of its own exported data


def canary_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: a canary node (``privacy.canaries``, simulation only) answers with its canary's update and
    never reaches the ClientApp; every other node passes through."""
    if CANARY not in context.node_config:
        return call_next(msg, context)
    party = int(context.node_config.get(PARTITION_ID, -1))
    return canary_reply(msg, job_from_run_config(context.run_config), int(context.node_config[CANARY]), party)


def owner_policy(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The node owner's policy (``policy-path`` in the node config), checked first: a run it refuses never
    reaches the data, the node's state or the job's mods."""
    policy = context.node_config.get(POLICY_PATH)
    if policy:
        job = job_from_run_config(context.run_config)
        check_run(Path(str(policy)), job, context.run_id, sample_rate=lambda: _sample_rate(job, context))
    return call_next(msg, context)


def job_mods(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The mods of the job in ``context.run_config`` around the ClientApp (first = outermost)."""
    job = job_from_run_config(context.run_config)
    chain = call_next
    for mod in reversed(build_mods(job)):
        chain = _bind(mod, chain)
    return chain(msg, context)


def _sample_rate(job: Job, context: Context) -> float:
    """DP-SGD's sampling rate on this node: its batch over its training examples."""
    _, workspace, index, _ = _workspace(context)
    return min(1.0, job.train.batch_size / len(workspace.examples("train", index)))


def _bind(mod, inner: ClientAppCallable) -> ClientAppCallable:
    return lambda msg, context: mod(msg, context, inner)


# a canary (an audit's data-less client) answers by itself; then the owner's policy, the node's own state restored
# from its disk (and saved after training), and the job's mods
app = ClientApp(mods=[canary_mod, owner_policy, keep_node_state, job_mods])


def _workspace(context: Context) -> tuple[Job, Workspace, int, int]:
    """This message's job; the workspace; (index of this node's data in it, its partition id).

    A node with ``data-path`` in its node config holds its own folder alone (index 0); otherwise (simulation)
    the workspace holds every partition and the node's is at ``partition-id``. The job is the run config's:
    the shared workspace may have been built for an earlier job that differs in what does not shape it
    (strategy, rounds, mods).
    """
    data_path = context.node_config.get(DATA_PATH)
    job = job_from_run_config(context.run_config)
    workspace = workspace_for(job, str(data_path) if data_path else None)
    partition = int(context.node_config.get(PARTITION_ID, 0))
    index = 0 if data_path else partition
    if not 0 <= index < workspace.num_parties:
        raise ValueError(f"partition-id {partition} is outside 0..{workspace.num_parties - 1}")
    return job, workspace, index, partition


def _load(workspace: Workspace, msg: Message, context: Context, adjust: PartyAdjustment) -> dict[str, torch.Tensor]:
    """Load the received global state and this node's personal part, adjusted for this party (e.g. truncated to
    its LoRA rank); return the global state."""
    received = msg.content[ARRAYS_KEY].to_torch_state_dict()
    if adjust.receive is not None:  # e.g. a lower LoRA rank's adapters arrive trimmed
        received = adjust.receive(received)
    mine = context.state[PERSONAL_KEY].to_torch_state_dict() if PERSONAL_KEY in context.state.array_records else None
    workspace.load(received, mine)
    for hook in adjust.after_load:
        hook(workspace.model)
    return received


def _client_record(party: int) -> ConfigRecord:
    return ConfigRecord({PARTITION_ID: party})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local steps on this node's training split, from the received global state."""
    job, workspace, index, party = _workspace(context)
    method = build_method(job.method)
    own = method.client_round()
    if own is not None:  # FedKSeed: zeroth-order steps from shared seeds, step records instead of a state
        content = own.train(job, workspace, index, party, msg, context)
        for key, value in reply_metrics(job).items():
            content[METRICS_KEY][key] = value
        return Message(content, reply_to=msg)
    model = workspace.model
    adjust = method.for_party(party)
    global_state = _load(workspace, msg, context, adjust)
    config = msg.content[CONFIG_KEY]
    server_round = int(config[SERVER_ROUND])
    # fixes shuffling, dropout layers and DP noise (a resumed run relies on it)
    seed = derive_seed(job.seed, server_round, Salt.LOCAL_TRAINING, party)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    stage = workspace.stream.stage_of(server_round)  # None: the job's only data
    data = workspace.examples("train", index, stage)
    steps = straggler_steps(workspace.local_steps(index, stage), job.train.steps_spread, seed)
    train = job.train
    optimizer = make_optimizer(model, train.lr, train.weight_decay, train.optimizer, train.momentum, train.beta2)
    if train.persistent_optimizer and OPTIMIZER_KEY in context.state.array_records:
        load_optimizer_state(optimizer, context.state[OPTIMIZER_KEY].to_torch_state_dict())
    schedule = {"kind": train.scheduler, "warmup_ratio": train.warmup_ratio, "steps": steps,
                "server_round": server_round, "rounds": job.federation.rounds, "min_lr_ratio": train.min_lr_ratio}
    rule = strategy_spec(job).client_rule(msg.content, model, global_state, context.state)
    rule.grad_hooks.extend(adjust.grad_hooks)  # e.g. a lower LoRA rank's components stay zero
    private = job.privacy.dp_sgd
    sample_rate = min(1.0, train.batch_size / len(data))
    batches = (poisson_batches(data, sample_rate, steps, generator) if private
               else step_batches(data, train.batch_size, steps, generator))
    if config.get(FLIP_LABELS_KEY):  # a label-flipping attacker (mod 'attack'): its own data poisoned
        batches = flip_labels(batches, len(workspace.data.label_names))
    penalties = list(rule.penalties)
    if stage is not None:  # a stream of stages: replay mixes in the node's own buffer, EWC adds its penalty
        batches, extra = workspace.stream.local_round(job, workspace, index, stage, context.state, batches, steps,
                                                      seed)
        penalties += extra
    scheduler = run_scheduler(optimizer, **schedule)
    batches = TokenCount(batches)
    started = time.perf_counter()
    with ExitStack() as stack:
        if adjust.view is not None:  # offsite-tuning: the party trains the emulator
            stack.enter_context(adjust.view(model))
        trained, stepping = model, optimizer
        if private:  # Opacus's hooks live for this client's round only (the backbone is shared)
            trained, stepping = stack.enter_context(dp_sgd_session(
                model, optimizer, noise_multiplier=job.privacy.sgd_noise_multiplier, clip=job.privacy.sgd_clip,
                expected_batch_size=train.batch_size, seed=seed))
        loss, seen = train_steps(
            trained,
            batches,
            objective=workspace.task.party_objective(data),
            optimizer=stepping,
            scheduler=scheduler,
            penalties=penalties,
            grad_hooks=rule.grad_hooks,
            max_grad_norm=0.0 if private else train.max_grad_norm,
            bf16=train.precision == "bf16",
        )
    seconds = time.perf_counter() - started
    if train.persistent_optimizer:  # the node's own: never sent
        context.state[OPTIMIZER_KEY] = ArrayRecord(optimizer_state(optimizer))
    private_metrics = _dp_sgd_account(job, context, steps, sample_rate,
                                       lambda: _steps_before(workspace, index, server_round)) if private else {}
    # The effective learning rate summed over the steps: SCAFFOLD and FedNova normalize updates by it.
    lr_sum = round_lr_sum(train.lr, **schedule) / (1.0 - train.momentum if train.optimizer == "sgd" else 1.0)
    shared, personal = split_personal(trainable_state(model), job.method.personal)
    if adjust.send is not None:
        shared = adjust.send(shared)
    if personal:
        context.state[PERSONAL_KEY] = ArrayRecord(personal)
    metrics = {"num-examples": len(data), "train-loss": loss, "examples-seen": seen, "local-steps": steps,
               "tokens-seen": batches.tokens, "lr-sum": lr_sum, "train-seconds": seconds, **adjust.metrics,
               **workspace.task.party_metrics(data, len(workspace.data.label_names)), **reply_metrics(job),
               **private_metrics}
    reply = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord(shared),
            METRICS_KEY: MetricRecord(metrics),
            CLIENT_KEY: _client_record(party),
            **rule.finish(model, lr_sum),
        }
    )
    return Message(reply, reply_to=msg)


def _dp_sgd_account(job: Job, context: Context, steps: int, sample_rate: float,
                    steps_before: Callable[[], int]) -> dict[str, float]:
    """Add this round's DP-SGD steps to the node's count; this client's epsilon so far.

    A node whose saved count is lost (it restarted without its state file) never counts from zero: it assumes it
    trained every earlier round at its full steps (``privacy.sgd_lost_count=assume``, reported as
    ``dp-sgd-assumed-steps``) or refuses to train (``refuse``)."""
    assumed: dict[str, float] = {}
    if DP_SGD_KEY in context.state.metric_records:
        done = int(context.state[DP_SGD_KEY]["steps"])
    elif lost := state_was_lost(context):
        if job.privacy.sgd_lost_count == "refuse":
            raise NodeStateError(f"privacy.dp_sgd: this node's count of its DP-SGD steps is lost ({lost}); it "
                                 "refuses to train (privacy.sgd_lost_count=refuse). Restore the file, or run with "
                                 "privacy.sgd_lost_count=assume")
        done = steps_before()
        assumed = {"dp-sgd-assumed-steps": done}
        logger.warning("ffm node: %s: DP-SGD count assumed %d steps (every earlier round)", lost, done)
    else:
        done = 0
    context.state[DP_SGD_KEY] = MetricRecord({"steps": done + steps, "sample-rate": sample_rate})
    return {"dp-sgd-epsilon": dp_sgd_epsilon(done + steps, sample_rate, job.privacy.sgd_noise_multiplier,
                                             job.privacy.delta), "dp-sgd-steps": done + steps, **assumed}


def _steps_before(workspace: Workspace, index: int, server_round: int) -> int:
    """The most local steps this node can have taken before ``server_round``: its full steps in every round."""
    return sum(workspace.local_steps(index, workspace.stream.stage_of(r)) for r in range(1, server_round))


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
    method = build_method(job.method)
    own = method.client_round()
    if own is not None:
        own.load(workspace, msg, context)
        adjust = PartyAdjustment()
    else:
        adjust = method.for_party(party)
        _load(workspace, msg, context, adjust)
    stage = workspace.stream.stage_of(int(msg.content[CONFIG_KEY].get(SERVER_ROUND, 1)))
    with adjust.view(workspace.model) if adjust.view is not None else nullcontext():
        result = workspace.task.evaluate(workspace.model, workspace.examples("val", index, stage),
                                         job.train.eval_batch_size)
    metrics = MetricRecord({k if k == "num-examples" else f"val-{k}": v for k, v in result.items()}
                           | reply_metrics(job))
    return Message(RecordDict({METRICS_KEY: metrics, CLIENT_KEY: _client_record(party)}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Replies without tensors: which data owner this node is (the local-only baseline asks it after a resume),
    with the scores of candidate prompts when the message carries some (``mode=prompt_search``)."""
    party = int(context.node_config.get(PARTITION_ID, 0))
    content = RecordDict({CLIENT_KEY: _client_record(party)})
    if CANDIDATES_KEY in msg.content.config_records:
        _, workspace, index, party = _workspace(context)
        for key, record in scores_reply(workspace, index, msg.content.config_records[CANDIDATES_KEY]).items():
            content[key] = record
    return Message(content, reply_to=msg)
