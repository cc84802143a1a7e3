"""The ServerApp: builds the strategy from the job, runs ``strategy.start`` and keeps the run directory.

After every round ``Strategy.start`` calls its ``evaluate_fn``; ffm's (:class:`RoundEnd`) runs three
separate pieces in order: global evaluation (:mod:`ffm.evaluation`), the round's metrics line, and the
checkpoint of the global and the strategy's state (:mod:`ffm.checkpointer`). An interrupted run loses at
most the round in flight and ``resume`` continues from the last complete one.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from tqdm.auto import tqdm

from ffm import privacy
from ffm.averaging import ModelAverage
from ffm.budget import StopTraining, should_stop, time_to_target
from ffm.carrier import Carrier, carrier_for
from ffm.checkpointer import Checkpointer
from ffm.compression import decode_reply
from ffm.config import job_from_run_config
from ffm.evaluation import Evaluator
from ffm.keys import BASE_DELTA_PREFIX, RUN_ID_KEY, is_base_delta
from ffm.methods import build_method
from ffm.observers import Reporters
from ffm.partition_report import report_partition
from ffm.party_evaluation import evaluate_parties
from ffm.prompt_search import run_prompt_search
from ffm.run_dir import RunDirectory
from ffm.settings import Job
from ffm.strategies import LocalOnly, RoundLog, RoundOffset, UpdateGuard, strategy_spec
from ffm.strategies.poisson import PoissonSampling
from ffm.tasks import build_task
from ffm.workspace import Workspace, workspace_for

__all__ = ["app", "build_strategy", "run_job", "streams"]

logger = logging.getLogger("ffm")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The ServerApp's entry: the job from the run config, over whatever Grid carries it."""
    run_job(grid, job_from_run_config(context.run_config))


def build_strategy(job: Job) -> Strategy:
    """The aggregation rule the job names (or the local-only baseline), inside the method's server half and
    every active privacy mechanism's; a server optimizer (FedAvgM, DiLoCo) outside them, so that it steps on
    the mean they release; Poisson sampling outermost."""
    if job.mode.keeps_party_models:
        return LocalOnly()
    spec = strategy_spec(job)
    if spec.assumes_sgd and job.train.optimizer != "sgd":
        logger.warning("strategy.name=%s reads client updates as plain SGD steps; with train.optimizer=%s its "
                       "correction is approximate (set train.optimizer=sgd)", job.strategy.name, job.train.optimizer)
    method, task = build_method(job.method), build_task(job.task)
    if spec.outer_on_mean and (privacy.wraps_mean(job) or task.needs_each_update):
        # the server optimizer steps on the released (noised) mean, or on the mean the task's server half made
        strategy = spec.outer(job.strategy, job.federation)
        strategy.inner = privacy.wrap_strategy(method.wrap_strategy(task.wrap_strategy(strategy.inner, job), job), job)
    else:
        rule = task.wrap_strategy(spec.build(job.strategy, job.federation), job)
        strategy = privacy.wrap_strategy(method.wrap_strategy(rule, job), job)
    if job.federation.sampling == "poisson":
        strategy = PoissonSampling(strategy, rate=job.federation.fraction_train, seed=job.seed)
    return strategy


def streams(job: Job) -> bool:
    """Whether replies can be folded into a running mean as they arrive (and ``federation.streaming`` asks):
    the rule's aggregate depends on them only through their weighted mean, and neither the method's server half
    nor a privacy mechanism reads each update."""
    return (job.federation.streaming and job.mode.aggregates and strategy_spec(job).mean_based
            and not build_method(job.method).needs_each_update and not privacy.needs_each_update(job)
            and not build_task(job.task).needs_each_update)


def _round_record(log: RoundLog, seconds: float) -> dict[str, Any]:
    return {
        "clients": log.clients,
        "rejected": log.rejected,
        "val": {k.replace("-", "_"): v for k, v in log.evaluate.items()},
        "bytes_down": log.bytes_down,
        "bytes_up": log.bytes_up,
        "wall_time_s": round(seconds, 3),
        **({"failed": log.failed} if log.failed else {}),
    }


class RoundEnd:
    """``evaluate_fn`` of Strategy.start: evaluate, append the metrics line, checkpoint, tell the observers."""

    def __init__(self, job: Job, evaluator: Evaluator, run: RunDirectory, guard: UpdateGuard,
                 checkpointer: Checkpointer, reporters: Reporters, *, offset: int) -> None:
        self.job, self.evaluator, self.run, self.guard, self.checkpointer = job, evaluator, run, guard, checkpointer
        self.reporters = reporters
        self.offset = offset
        self.stages: Any = None  # a stream of stages: each line's stage, and what is measured after a stage
        self.average: ModelAverage | None = checkpointer.average  # federation.ema's, or None
        self.last_state: dict[str, torch.Tensor] | None = None  # the global state the last call saw
        self._tick = time.perf_counter()
        self._left = self._tick  # when the previous call returned
        self.bar = tqdm(total=job.federation.rounds, initial=offset, desc="rounds", disable=not job.progress)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        entered = time.perf_counter()
        true_round = server_round + self.offset
        if server_round == 0 and self.offset > 0:
            return None  # that round's line and checkpoint were written before the interruption
        log = self.guard.rounds.pop(true_round) if true_round > 0 else None
        reason = self._stop_reason(true_round, log)
        party_states = getattr(self.guard, "party_states", None)
        stage = self.stages.test_stage(true_round) if self.stages else None
        evaluates = _evaluates(self.job, true_round) or bool(reason)  # the model a run ends with is measured
        test = self.evaluator.round(arrays, party_states, stage) if evaluates else {}
        line: dict[str, Any] = {"round": true_round, **test}
        if self.stages:
            line.update(self.stages.fields(true_round, arrays, party_states))
        sample = None if party_states or not evaluates else self.evaluator.sample()  # of the model just evaluated
        if sample is not None:
            self.run.append_sample(true_round, sample)
        if self.average is not None and true_round > 0:
            self.average.update(arrays.to_torch_state_dict())
            if evaluates:
                line.update(self.evaluator.named(self.average.state(), "ema", stage))
        if log is not None:
            now = time.perf_counter()
            line.update(_round_record(log, now - self._tick))
            if self.job.privacy.clipping != "none":  # a failed round released nothing, so it spends nothing;
                # under Poisson sampling every round counts (whether a round drew anyone is itself an outcome)
                poisson = self.job.federation.sampling == "poisson"
                released = sum(1 for m in self.run.read_metrics()
                               if m["round"] > 0 and (poisson or not m.get("failed")))
                line["epsilon"] = privacy.epsilon(self.job, released + (poisson or not line.get("failed")))
            self._tick = now
        self.run.append_metrics(line)
        evaluated = time.perf_counter()
        if true_round > 0:
            self.checkpointer.save(true_round, arrays.to_torch_state_dict())
            self.bar.update(1)
        primary = self.evaluator.primary
        if primary in line:
            self.bar.set_postfix({primary: f"{line[primary]:.3f}"})
        self.reporters.round(line)
        left = time.perf_counter()
        self.reporters.timing(true_round, {"between": entered - self._left, "evaluate": evaluated - entered,
                                           "checkpoint": left - evaluated})
        self._left = left
        self.last_state = arrays.to_torch_state_dict()
        if reason:
            raise StopTraining(true_round, reason)
        return MetricRecord({k: v for k, v in test.items() if isinstance(v, float | int)})

    def _stop_reason(self, true_round: int, log: RoundLog | None) -> str:
        """Why the budget ends the run after this round (''), judged from the lines so far and this round's
        clients and validation (``federation.rounds`` ends it anyway)."""
        if log is None or true_round >= self.job.federation.rounds:
            return ""
        now = {"round": true_round, **_round_record(log, 0.0)}
        task = self.evaluator.workspace.task
        return should_stop([*self.run.read_metrics(), now], task.primary_metric, task.higher_is_better,
                           self.job.budget)


def _evaluates(job: Job, true_round: int) -> bool:
    """Whether a round is evaluated on the test set: every ``federation.evaluate_every``-th, and the first and
    last (round 0, the initial model, is evaluated too)."""
    every = job.federation.evaluate_every
    return true_round % every == 0 or true_round == job.federation.rounds


def run_job(grid: Grid, job: Job, carrier: Carrier | None = None) -> dict[str, Any]:
    """Run (or resume) ``job`` over ``grid``; write the run directory; return the summary.

    ``carrier``: the runtime's services beyond the Grid API (default: what ``grid`` itself offers)."""
    carrier = carrier or carrier_for(grid)
    run = RunDirectory(job.run_dir)
    workspace = workspace_for(job)  # bad data or model fails here, before anything is written
    if not job.mode.trains:  # a prompt search: its own loop of query messages
        return run_prompt_search(grid, job, workspace, run)
    run.start(job)
    reporters = Reporters(job, run.path)
    table = report_partition(workspace.data, run.path) if not job.mode.pools_data else None
    if table:
        logger.info("%s", table)
    codec, streaming = job.client.compression, streams(job)
    guard = UpdateGuard(build_strategy(job), min_updates=job.federation.min_train_clients,
                        max_failed_rounds=job.federation.max_failed_rounds,
                        decoder=None if codec == "none" else partial(decode_reply, codec=codec),
                        streaming=streaming, evaluates=partial(_evaluates, job))
    carrier.stream_replies(streaming)
    average = ModelAverage(job.federation.ema) if job.federation.ema else None
    checkpointer = Checkpointer(run, guard, carrier, keep_last=job.checkpoint.keep_last, average=average)
    offset, initial = checkpointer.restore(workspace.initial_state) if job.resume else (0, workspace.initial_state)
    evaluator = Evaluator(workspace)
    round_end = RoundEnd(job, evaluator, run, guard, checkpointer, reporters, offset=offset)
    start = time.perf_counter()
    stream = workspace.stream
    stages = stream.server_loop(job, workspace, run)  # what changes between stages and is measured after each
    round_end.stages = stages
    phases = stream.phases(job.federation.rounds, offset)
    final_state = initial
    stopped = None
    for number, (stage, first) in enumerate(phases):  # one phase, or a stream's stages
        last = phases[number + 1][1] - 1 if number + 1 < len(phases) else job.federation.rounds
        if stages and stage is not None:
            final_state = stages.begin(stage, final_state, getattr(guard, "party_states", None))
        if last < first:
            continue
        round_end.offset = first - 1
        try:
            result = RoundOffset(guard, offset=first - 1, seed=job.seed).start(
                stages.grid(grid, stage, carrier) if stages and stage is not None else grid,
                ArrayRecord(final_state),
                num_rounds=last - first + 1,
                timeout=job.federation.round_timeout,
                # the ffm run's id: nodes key the state they keep on their own disk by it (ffm.node_state)
                train_config=ConfigRecord({RUN_ID_KEY: run.run_id}),
                evaluate_config=ConfigRecord({RUN_ID_KEY: run.run_id}),
                evaluate_fn=round_end,
            )
        except StopTraining as stop:  # the budget ended the run after a complete, checkpointed round
            logger.info("ffm: stopping after round %d: %s", stop.server_round, stop.reason)
            stopped = {"round": stop.server_round, "reason": stop.reason}
            final_state = round_end.last_state if round_end.last_state is not None else final_state
            break
        if len(result.arrays) > 0:  # Flower keeps the last aggregate; the local baseline never makes one
            final_state = result.arrays.to_torch_state_dict()
    round_end.bar.close()
    summary = _finish(job, workspace, run, guard, final_state, time.perf_counter() - start, carrier.personal_states())
    if average is not None and average.count:
        _save_final(workspace, average.state(), run.path / "final" / "ema")
        summary["ema"] = _ema_summary(job, run, workspace)
    summary["stopped_early"] = stopped
    if job.budget.target:
        task = workspace.task
        summary["to_target"] = {"target": job.budget.target, **time_to_target(
            run.read_metrics(), task.primary_metric, task.higher_is_better, job.budget.target, job.budget.fractions)}
    if stages:
        summary["continual"] = stages.summary()
        for name, state in stages.final_states():  # e.g. one adapter per stage
            _save_final(workspace, state, run.path / "final" / name)
    run.write_summary(summary)
    reporters.finish(summary)
    return summary


def _save_final(workspace: Workspace, state: dict[str, torch.Tensor], target: Path) -> None:
    workspace.load(state)  # with the initial personal part: a client's own part never leaves it
    workspace.model.save_pretrained(target)
    deltas = {k[len(BASE_DELTA_PREFIX):]: v for k, v in state.items() if is_base_delta(k)}
    if deltas:  # exact LoRA aggregation: the adapter is only right on top of the base plus these deltas
        torch.save(deltas, target / "base_deltas.pt")
        (target / "BASE_DELTAS.md").write_text(
            "This adapter was aggregated exactly (method.aggregation=exact): before loading it, add each tensor\n"
            "of base_deltas.pt (keyed by the PEFT model's parameter name) to that base weight.\n")
    if workspace.tokenizer is not None:
        workspace.tokenizer.save_pretrained(target)


def _ema_summary(job: Job, run: RunDirectory, workspace: Workspace) -> dict[str, Any]:
    """federation.ema's average: its last and best primary metric, where the run's own are reported."""
    task = workspace.task
    key = f"test_ema_{task.primary_metric}"
    values = [m[key] for m in run.read_metrics() if key in m]
    return {"decay": job.federation.ema, f"final_{key}": values[-1] if values else None,
            f"best_{key}": _best(task, values), "saved": "final/ema"}


def _best(task: Any, values: list[float]) -> float | None:
    """The best of a metric's values by the task's direction (None without any)."""
    best = None
    for value in values:
        best = value if best is None or task.better(value, best) else best
    return best


def _dp_sgd_summary(job: Job, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Each party's epsilon is the largest it reported (its count never goes back, restarts included); the run's
    is the largest over the parties. Counts a node had to assume after losing its state are listed."""
    parties: dict[str, float] = {}
    for client in (c for m in metrics for c in m["clients"]):
        party = str(client.get("partition_id", client.get("node")))
        parties[party] = max(parties.get(party, 0.0), client.get("dp_sgd_epsilon", 0.0))
    assumed = [{"round": m["round"], "partition_id": c.get("partition_id"), "steps": c["dp_sgd_assumed_steps"]}
               for m in metrics for c in m["clients"] if "dp_sgd_assumed_steps" in c]
    return {"epsilon_max": max(parties.values(), default=0.0), "epsilon_per_party": parties,
            "assumed_counts": assumed, "delta": job.privacy.delta, "noise_multiplier": job.privacy.sgd_noise_multiplier,
            "clip": job.privacy.sgd_clip, "accountant": "opacus RDP, per client"}


def _finish(
    job: Job, workspace: Workspace, run: RunDirectory, guard: UpdateGuard, state: dict, seconds: float,
    personal: dict[int, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    task = workspace.task
    metrics = [m for m in run.read_metrics() if m["round"] > 0]
    party_states = getattr(guard, "party_states", None)
    if party_states:
        for pid, arrays in sorted(party_states.items()):
            _save_final(workspace, arrays.to_torch_state_dict(), run.path / "final" / f"client-{pid}")
    else:
        _save_final(workspace, state, run.path / "final")
    last = metrics[-1] if metrics else {}
    primary = f"test_{task.primary_metric}"
    last = next((m for m in reversed(metrics) if primary in m), last)  # federation.evaluate_every skips rounds
    best = _best(task, [m[primary] for m in metrics if primary in m])
    parties = None
    if job.train.eval_parties:
        own = {pid: a.to_torch_state_dict() for pid, a in party_states.items()} if party_states else None
        parties = evaluate_parties(workspace, state, own, personal)
    warning = task.diagnose({k.removeprefix("test_").replace("_", "-"): v for k, v in last.items()})
    if warning:
        logger.warning("ffm: warning: %s", warning)
    return {
        "mode": str(job.mode),
        "task": job.task.name,
        "primary_metric": task.primary_metric,
        "higher_is_better": task.higher_is_better,
        "rounds": len(metrics),
        f"final_{primary}": last.get(primary),
        "final_test_loss": last.get("test_loss"),
        f"best_{primary}": best,
        f"final_val_{task.primary_metric}": last.get("val", {}).get(f"val_{task.primary_metric}"),
        "bytes_up": sum(m["bytes_up"] for m in metrics),
        "bytes_down": sum(m["bytes_down"] for m in metrics),
        "local_steps": sum(c.get("local_steps", 0) for m in metrics for c in m["clients"]),
        "tokens": sum(c.get("tokens_seen", 0) for m in metrics for c in m["clients"]),
        "rejected_updates": sum(len(m["rejected"]) for m in metrics),
        "failed_rounds": [m["round"] for m in metrics if m.get("failed")],
        "trainable_params": sum(t.numel() for k, t in state.items() if not is_base_delta(k)),
        "total_params": sum(p.numel() for p in workspace.model.parameters()),
        "privacy": None if job.privacy.clipping == "none" else {
            "epsilon": last.get("epsilon"), "delta": job.privacy.delta,
            "noise_multiplier": privacy.noise_multiplier(job),
            "clipping": job.privacy.clipping, "side": job.privacy.side, "accountant": "opacus RDP"},
        "dp_sgd": None if not job.privacy.dp_sgd else _dp_sgd_summary(job, metrics),
        "secure_aggregation": None if not job.privacy.secure_aggregation else {
            "rounds": {str(k): v for k, v in getattr(guard, "costs", {}).items()},
            "bits": job.privacy.secagg_bits, "bound": job.privacy.secagg_bound,
            "threshold": job.privacy.secagg_threshold, "neighbours": job.privacy.secagg_neighbours},
        "parties": parties,
        "overfit_gap": None if parties is None or last.get(primary) is None
        else parties[f"train_{task.primary_metric}"] - last[primary],
        "warnings": [warning] if warning else [],
        "wall_time_s": round(seconds, 2),
        "run_dir": str(run.path),
    }
