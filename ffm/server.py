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

from ffm.checkpointer import Checkpointer
from ffm.client import PERSONAL_KEY
from ffm.compression import decode_reply
from ffm.config import JobConfig, job_from_run_config
from ffm.continual.stages import StageLoop
from ffm.evaluation import Evaluator
from ffm.methods.lora_federation import BASE_DELTA_PREFIX, is_base_delta
from ffm.partition_report import report_partition
from ffm.party_evaluation import evaluate_parties
from ffm.privacy import dp_strategy, epsilon, noise_multiplier
from ffm.prompt_search import run_prompt_search
from ffm.run_dir import RunDirectory
from ffm.secagg import SecAggPlus
from ffm.strategies import STRATEGIES, LocalOnly, RoundLog, RoundOffset, UpdateGuard
from ffm.strategies.lora_aggregation import LoraAggregation
from ffm.strategies.streaming import streams
from ffm.workspace import Workspace, workspace_for

__all__ = ["app", "build_strategy", "run_job"]

logger = logging.getLogger("ffm")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_job(grid, job_from_run_config(context.run_config))


def build_strategy(job: JobConfig) -> Strategy:
    """The aggregation rule the job names (or the local-only baseline)."""
    if job.mode == "local":
        return LocalOnly()
    spec = STRATEGIES[job.strategy.name]
    if spec.assumes_sgd and job.train.optimizer != "sgd":
        logger.warning("strategy.name=%s reads client updates as plain SGD steps; with train.optimizer=%s its "
                       "correction is approximate (set train.optimizer=sgd)", job.strategy.name, job.train.optimizer)
    strategy = spec.build(job.strategy, job.federation)
    exact = getattr(job.method, "aggregation", "naive") == "exact"
    ranks = getattr(job.method, "client_ranks", [])
    if exact or ranks:
        strategy = LoraAggregation(strategy, exact=exact, heterogeneous=bool(ranks),
                                   scaling=job.method.alpha / job.method.r)
    if job.privacy.secure_aggregation:  # the clients clip and add their share of DP noise before masking
        return SecAggPlus(strategy, job)
    if job.privacy.clipping != "none":
        strategy = dp_strategy(strategy, job)
    return strategy


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
    """``evaluate_fn`` of Strategy.start: evaluate, then append the metrics line, then checkpoint."""

    def __init__(self, job: JobConfig, evaluator: Evaluator, run: RunDirectory, guard: UpdateGuard,
                 checkpointer: Checkpointer, *, offset: int) -> None:
        self.job, self.evaluator, self.run, self.guard, self.checkpointer = job, evaluator, run, guard, checkpointer
        self.offset = offset
        self.stages: StageLoop | None = None  # a continual stream: each line's stage, and the rows of R
        self._tick = time.perf_counter()
        self.bar = tqdm(total=job.federation.rounds, initial=offset, desc="rounds", disable=not job.progress)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        true_round = server_round + self.offset
        if server_round == 0 and self.offset > 0:
            return None  # that round's line and checkpoint were written before the interruption
        party_states = getattr(self.guard, "party_states", None)
        stage = self.stages.test_stage(true_round) if self.stages else None
        test = self.evaluator.round(arrays, party_states, stage)
        line: dict[str, Any] = {"round": true_round, **test}
        if self.stages:
            line.update(self.stages.fields(true_round, arrays, party_states))
        sample = None if party_states else self.evaluator.sample()  # of the global model just evaluated
        if sample is not None:
            self.run.append_sample(true_round, sample)
        if true_round > 0:
            now = time.perf_counter()
            line.update(_round_record(self.guard.rounds.pop(true_round), now - self._tick))
            if self.job.privacy.clipping != "none":  # a failed round released nothing, so it spends nothing
                released = sum(1 for m in self.run.read_metrics() if m["round"] > 0 and not m.get("failed"))
                line["epsilon"] = epsilon(self.job, released + (not line.get("failed")))
            self._tick = now
        self.run.append_metrics(line)
        if true_round > 0:
            self.checkpointer.save(true_round, arrays.to_torch_state_dict())
            self.bar.update(1)
        primary = self.evaluator.primary
        self.bar.set_postfix({primary: f"{line[primary]:.3f}"})
        return MetricRecord({k: v for k, v in test.items() if isinstance(v, float | int)})


def run_job(grid: Grid, job: JobConfig) -> dict[str, Any]:
    """Run (or resume) ``job`` over ``grid``; write the run directory; return the summary."""
    run = RunDirectory(job.run_dir)
    workspace = workspace_for(job)  # bad data or model fails here, before anything is written
    if job.mode == "prompt_search":  # no training: its own loop of query messages
        return run_prompt_search(grid, job, workspace, run)
    run.start(job)
    table = report_partition(workspace.data, run.path) if job.mode != "centralized" else None
    if table:
        logger.info("%s", table)
    codec, streaming = job.client.compression, streams(job)
    guard = UpdateGuard(build_strategy(job), min_updates=job.federation.min_train_clients,
                        max_failed_rounds=job.federation.max_failed_rounds,
                        decoder=None if codec == "none" else partial(decode_reply, codec=codec),
                        streaming=streaming)
    if streaming and hasattr(grid, "streaming"):
        grid.streaming = True  # the in-process Grid delivers train messages one by one as replies are read
    checkpointer = Checkpointer(run, guard, keep_last=job.checkpoint.keep_last, grid=grid)
    offset, initial = checkpointer.restore(workspace.initial_state) if job.resume else (0, workspace.initial_state)
    evaluator = Evaluator(workspace)
    round_end = RoundEnd(job, evaluator, run, guard, checkpointer, offset=offset)
    start = time.perf_counter()
    stages = StageLoop(job, workspace, run) if job.continual.kind != "none" else None
    round_end.stages = stages
    phases = stages.phases() if stages else [(None, offset + 1)]
    final_state = initial
    for number, (stage, first) in enumerate(phases):  # one phase, or a continual stream's stages
        last = phases[number + 1][1] - 1 if number + 1 < len(phases) else job.federation.rounds
        if stages and stage is not None:
            final_state = stages.begin(stage, final_state, getattr(guard, "party_states", None))
        if last < first:
            continue
        round_end.offset = first - 1
        result = RoundOffset(guard, offset=first - 1, seed=job.seed).start(
            stages.grid(grid, stage) if stages and stage is not None else grid,
            ArrayRecord(final_state),
            num_rounds=last - first + 1,
            train_config=ConfigRecord({}),
            evaluate_fn=round_end,
        )
        if len(result.arrays) > 0:  # Flower keeps the last aggregate; the local baseline never makes one
            final_state = result.arrays.to_torch_state_dict()
    round_end.bar.close()
    summary = _finish(job, workspace, run, guard, final_state, time.perf_counter() - start, _personal_parts(grid))
    if stages:
        summary["continual"] = stages.summary()
        if job.continual.method == "adapters":
            for k, models in enumerate(stages.snapshots):
                if None in models:
                    _save_final(workspace, models[None], run.path / "final" / f"stage-{k}")
    run.write_summary(summary)
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


def _personal_parts(grid: Grid) -> dict[int, dict[str, torch.Tensor]]:
    """Each virtual node's kept part by partition id: only an in-process Grid can show them (for evaluation)."""
    contexts = getattr(grid, "contexts", {})
    return {int(ctx.node_config["partition-id"]): ctx.state[PERSONAL_KEY].to_torch_state_dict()
            for ctx in contexts.values() if PERSONAL_KEY in ctx.state.array_records}


def _finish(
    job: JobConfig, workspace: Workspace, run: RunDirectory, guard: UpdateGuard, state: dict, seconds: float,
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
    values = [m[primary] for m in metrics]
    best = None
    for value in values:
        best = value if best is None or task.better(value, best) else best
    parties = None
    if job.train.eval_parties:
        own = {pid: a.to_torch_state_dict() for pid, a in party_states.items()} if party_states else None
        parties = evaluate_parties(workspace, state, own, personal)
    warning = task.diagnose({k.removeprefix("test_").replace("_", "-"): v for k, v in last.items()})
    if warning:
        logger.warning("ffm: warning: %s", warning)
    return {
        "mode": job.mode,
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
        "rejected_updates": sum(len(m["rejected"]) for m in metrics),
        "failed_rounds": [m["round"] for m in metrics if m.get("failed")],
        "trainable_params": sum(t.numel() for k, t in state.items() if not is_base_delta(k)),
        "total_params": sum(p.numel() for p in workspace.model.parameters()),
        "privacy": None if job.privacy.clipping == "none" else {
            "epsilon": last.get("epsilon"), "delta": job.privacy.delta, "noise_multiplier": noise_multiplier(job),
            "clipping": job.privacy.clipping, "side": job.privacy.side, "accountant": "opacus RDP"},
        "dp_sgd": None if not job.privacy.dp_sgd else {
            "epsilon_max": max((c.get("dp_sgd_epsilon", 0.0) for m in metrics for c in m["clients"]), default=0.0),
            "delta": job.privacy.delta, "noise_multiplier": job.privacy.sgd_noise_multiplier,
            "clip": job.privacy.sgd_clip, "accountant": "opacus RDP, per client"},
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
