"""The rules of ``task.head_aggregation=per_class`` (ffm/strategies/class_head.py) against the other sections.

The server reads each party's head rows and label counts: nothing may hide or noise them (a privacy mechanism
around the mean would be bypassed for the head), the rule must be a mean (or an outer step on one), the update
must be a state (not step records), and the head must keep its classes (no class-incremental stream).
"""

from __future__ import annotations

from ffm import privacy
from ffm.methods import build_method
from ffm.settings import CHECKS, Job, require
from ffm.strategies import STRATEGIES, strategy_spec

__all__ = ["check_head_aggregation"]


def check_head_aggregation(job: Job) -> None:
    """Per-class head aggregation needs each party's plain state and label counts, around a mean."""
    if getattr(job.task, "head_aggregation", "mean") != "per_class":
        return
    spec = strategy_spec(job)
    require(spec.plain_mean or spec.outer_on_mean,
            f"task.head_aggregation=per_class replaces the head's rows of a mean: strategy.name={job.strategy.name} "
            f"is not one; use {' or '.join(n for n, s in STRATEGIES.items() if s.plain_mean or s.outer_on_mean)}")
    hidden = privacy.masks_updates(job) or (f"privacy.clipping={job.privacy.clipping}" if privacy.wraps_mean(job)
                                            else None) or ("privacy.dp_sgd=true" if job.privacy.dp_sgd else None)
    require(not hidden, f"task.head_aggregation=per_class reads each party's head rows and label counts, which "
                        f"{hidden} exists to keep from the server; set task.head_aggregation=mean")
    require(build_method(job.method).client_round() is None,
            f"task.head_aggregation=per_class reads head rows from each update: method.name={job.method.name} sends "
            "step records instead of a state; set task.head_aggregation=mean")
    require(job.continual.kind != "class_incremental",
            "task.head_aggregation=per_class with continual.kind=class_incremental: the head's classes change per "
            "stage; set task.head_aggregation=mean")


CHECKS.register("per_class_head_reads_each_party", check_head_aggregation)
