"""The rules a stream of stages sets for the rest of the job, checked before anything loads or is written."""

from __future__ import annotations

from ffm.continual.stream import parse_parties
from ffm.data import SOURCES
from ffm.methods import build_method
from ffm.settings import Job, require
from ffm.strategies import STRATEGIES, strategy_spec
from ffm.tasks import TASKS

__all__ = ["check_stream"]


def check_stream(job: Job) -> None:
    """A stream needs whole stages of rounds, a training mode, a growable head for new classes, and sources and
    parties that exist."""
    c = job.continual
    if c.kind == "none":
        return
    require(job.mode.trains, f"continual.kind={c.kind} trains: use mode=federated, centralized or local")
    require(job.federation.rounds % c.stages == 0,
            f"federation.rounds={job.federation.rounds} must be a multiple of continual.stages={c.stages} (each "
            "stage trains rounds / stages rounds); e.g. federation.rounds="
            f"{c.stages * max(1, job.federation.rounds // c.stages)}")
    unknown = [source for source in c.sources if source not in SOURCES]
    require(not unknown, f"continual.sources names {unknown}, which are not data sources; known: "
            f"{', '.join(SOURCES.names())}")
    for text in c.parties:
        parse_parties(text, job.federation.num_clients)
    growing = c.kind == "class_incremental"
    require(not growing or TASKS[job.task.name].growable_head,
            f"continual.kind=class_incremental grows a classification head: task.name={job.task.name} has none "
            "(use kind=domain_incremental)")
    require(not growing or not strategy_spec(job).model_shaped_state or job.mode.keeps_party_models,
            f"continual.kind=class_incremental: strategy.name={job.strategy.name} keeps server state shaped like the "
            "model, and the head grows at each stage; use one of "
            f"{', '.join(n for n, s in STRATEGIES.items() if not s.model_shaped_state)}")
    require(c.approach != "replay" or not job.privacy.dp_sgd,
            "continual.approach=replay with privacy.dp_sgd=true: DP-SGD's Poisson batches cannot mix in the buffer")
    require(c.approach != "replay" or not getattr(job.task, "logit_adjust", 0),
            "continual.approach=replay with task.logit_adjust: the adjustment counts the stage's own labels, not the "
            "replayed buffer's; set task.logit_adjust=0")
    require(not growing or not build_method(job.method).cfg.personal,
            "continual.kind=class_incremental grows the head on the server: method.personal must be empty")
    require(not job.budget.patience, "budget.patience stops a run early; a continual stream's stages need all their "
            "rounds: set it to 0")
    require(not job.resume, "resume=true is not supported for continual jobs yet: start the stream again")
    require(not job.data.test_path, "continual jobs split their stream themselves: data.test_path (a deployment's "
            "exported split) cannot carry stages; run the SuperNodes without data-path")
