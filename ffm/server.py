"""The ServerApp: builds the strategy from the job, runs ``strategy.start`` and keeps the run directory.

Global evaluation on the held-out test set is the ``evaluate_fn`` of ``Strategy.start``; after every
round it also writes the round's metrics line and checkpoint, so an interrupted run loses at most the
round in flight and ``resume`` continues from the last complete one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from tqdm.auto import tqdm

from ffm.config import JobConfig, job_from_run_config
from ffm.models import load_trainable_state
from ffm.run_dir import RunDirectory
from ffm.strategies import STRATEGIES, LocalOnly, RoundOffset, UpdateGuard
from ffm.tasks import evaluate
from ffm.workspace import Workspace, workspace_for

__all__ = ["app", "run_job"]

logger = logging.getLogger("ffm")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_job(grid, job_from_run_config(context.run_config))


def _evaluate_state(workspace: Workspace, state: dict[str, torch.Tensor]) -> dict[str, float]:
    load_trainable_state(workspace.model, state)
    return evaluate(workspace.model, workspace.examples("test"), workspace.job.train.eval_batch_size)


class Reporter:
    """``evaluate_fn`` of Strategy.start: test metrics, the metrics line, the checkpoint, the progress bar."""

    def __init__(self, job: JobConfig, workspace: Workspace, run: RunDirectory, guard: UpdateGuard, offset: int):
        self.job, self.workspace, self.run, self.guard, self.offset = job, workspace, run, guard, offset
        self.last_state: dict[str, torch.Tensor] | None = None
        self._tick = time.perf_counter()
        self.bar = tqdm(total=job.federation.rounds, initial=offset, desc="rounds", disable=not job.progress)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        true_round = server_round + self.offset
        self.last_state = arrays.to_torch_state_dict()
        if server_round == 0 and self.offset > 0:
            return None  # that round's line and checkpoint were written before the interruption
        line = {"round": true_round, **self._test_metrics(self.last_state)}
        if true_round > 0:
            line.update(self._round_record(true_round))
            extra = self._strategy_state()
            self.run.append_metrics(line)
            self.run.save_checkpoint(true_round, self.last_state, extra)
            self.bar.update(1)
        else:
            self.run.append_metrics(line)
        self.bar.set_postfix(test_acc=f"{line['test_accuracy']:.3f}")
        return MetricRecord({"test-loss": line["test_loss"], "test-accuracy": line["test_accuracy"]})

    def _test_metrics(self, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        local = self._local_only()
        if local is None or not local.states:
            result = _evaluate_state(self.workspace, state)
            return {"test_loss": result["loss"], "test_accuracy": result["accuracy"]}
        per_node = {node: _evaluate_state(self.workspace, arrays.to_torch_state_dict())
                    for node, arrays in sorted(local.states.items())}
        return {
            "test_loss": sum(r["loss"] for r in per_node.values()) / len(per_node),
            "test_accuracy": sum(r["accuracy"] for r in per_node.values()) / len(per_node),
            "test_accuracy_per_node": {str(node): r["accuracy"] for node, r in per_node.items()},
        }

    def _round_record(self, true_round: int) -> dict[str, Any]:
        log = self.guard.rounds.pop(true_round)
        now = time.perf_counter()
        record = {
            "clients": log.clients,
            "rejected": log.rejected,
            "val": {k.replace("-", "_"): v for k, v in log.evaluate.items()},
            "bytes_down": log.bytes_down,
            "bytes_up": log.bytes_up,
            "wall_time_s": round(now - self._tick, 3),
        }
        self._tick = now
        return record

    def _local_only(self) -> LocalOnly | None:
        inner = self.guard.inner
        return inner if isinstance(inner, LocalOnly) else None

    def _strategy_state(self) -> dict:
        local = self._local_only()
        return {"local_states": local.state_dict()} if local is not None else {}


def build_strategy(job: JobConfig) -> Strategy:
    """The aggregation rule the job names (or the local-only baseline)."""
    if job.mode == "local":
        return LocalOnly()
    return STRATEGIES[job.federation.strategy](job.federation.fraction_train, job.federation.fraction_evaluate)


def run_job(grid: Grid, job: JobConfig) -> dict[str, Any]:
    """Run (or resume) ``job`` over ``grid``; write the run directory; return the summary."""
    run = RunDirectory(job.run_dir)
    workspace = workspace_for(job)  # bad data or model fails here, before anything is written
    run.start(job)
    core = build_strategy(job)
    checkpoint = run.latest_checkpoint() if job.resume else None
    offset, initial = 0, workspace.initial_state
    if checkpoint is not None:
        offset, initial = int(checkpoint["round"]), checkpoint["state"]
        if isinstance(core, LocalOnly):
            core.load_state_dict(checkpoint.get("extra", {}).get("local_states", {}))
        run.keep_metrics_through(offset)
        logger.info("resuming %s after round %d", run.path, offset)
    guard = UpdateGuard(core)
    reporter = Reporter(job, workspace, run, guard, offset)
    start = time.perf_counter()
    if job.federation.rounds > offset:
        RoundOffset(guard, offset=offset, seed=job.seed).start(
            grid,
            ArrayRecord(initial),
            num_rounds=job.federation.rounds - offset,
            train_config=ConfigRecord({}),
            evaluate_fn=reporter,
        )
    reporter.bar.close()
    final_state = reporter.last_state if reporter.last_state is not None else initial
    summary = _finish(job, workspace, run, core, final_state, time.perf_counter() - start)
    run.write_summary(summary)
    return summary


def _save_final(workspace: Workspace, state: dict[str, torch.Tensor], target: Path) -> None:
    load_trainable_state(workspace.model, state)
    workspace.model.save_pretrained(target)
    workspace.tokenizer.save_pretrained(target)


def _finish(
    job: JobConfig, workspace: Workspace, run: RunDirectory, core: Strategy, state: dict, seconds: float
) -> dict[str, Any]:
    metrics = [m for m in run.read_metrics() if m["round"] > 0]
    if isinstance(core, LocalOnly):
        for node, arrays in sorted(core.states.items()):
            _save_final(workspace, arrays.to_torch_state_dict(), run.path / "final" / f"client-{node - 1}")
    else:
        _save_final(workspace, state, run.path / "final")
    last = metrics[-1] if metrics else {}
    trainable = sum(t.numel() for t in state.values())
    return {
        "mode": job.mode,
        "rounds": len(metrics),
        "final_test_accuracy": last.get("test_accuracy"),
        "final_test_loss": last.get("test_loss"),
        "best_test_accuracy": max((m["test_accuracy"] for m in metrics), default=None),
        "final_val_accuracy": last.get("val", {}).get("val_accuracy"),
        "bytes_up": sum(m["bytes_up"] for m in metrics),
        "bytes_down": sum(m["bytes_down"] for m in metrics),
        "rejected_updates": sum(len(m["rejected"]) for m in metrics),
        "trainable_params": trainable,
        "total_params": sum(p.numel() for p in workspace.model.parameters()),
        "wall_time_s": round(seconds, 2),
        "run_dir": str(run.path),
    }
