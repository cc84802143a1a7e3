"""The ``budget`` section: when a run stops, and what it took to get somewhere.

A run trains at most ``federation.rounds`` rounds. With ``budget.patience`` it stops earlier, once its
validation metric (the primary metric on the parties' own validation splits, measured the same way in every
mode, never on the test set) has not improved by ``budget.min_delta`` for that many rounds (never before
``budget.min_rounds``); with ``budget.max_tokens`` once its clients have trained on that many tokens.
:func:`time_to_target` reads a run's metrics lines and says after how many rounds, local steps, tokens, bytes
and seconds its validation metric first reached a fraction of a target: the cost of getting there, not only
where the run ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ffm.settings import items, option, require

__all__ = ["BudgetConfig", "StopTraining", "reached", "should_stop", "time_to_target"]


@dataclass
class BudgetConfig:
    """When a run stops before ``federation.rounds``, and the target its cost is measured against."""

    patience: int = option(0, "stop after this many rounds without a better validation metric (0 = run every round)")
    min_delta: float = option(0.0, "the least change of the validation metric that counts as better")
    min_rounds: int = option(0, "patience never stops a run before this round (a run still near its start, e.g. "
                             "at a low learning rate, is not at a plateau)")
    watch_loss: bool = option(False, "patience also counts a validation loss lower than every earlier one as "
                              "progress: a run whose loss still falls while its accuracy on a small validation "
                              "split stands still (a start-up plateau, a coarse metric) is not at its plateau")
    max_tokens: int = option(0, "stop once the clients have trained on this many tokens in all (0 = no limit)")
    target: float = option(0.0, "a validation value to reach (0 = none): the summary reports what reaching "
                           "budget.fractions of it took (ffm compare uses the centralized run's best)")
    fractions: list[float] = items("fractions of budget.target whose cost the summary reports", (0.95, 0.99))

    def __post_init__(self) -> None:
        require(self.patience >= 0 and self.min_delta >= 0 and self.max_tokens >= 0 and self.min_rounds >= 0,
                "budget.patience, budget.min_delta, budget.min_rounds and budget.max_tokens must be >= 0")
        require(all(0 < f <= 1 for f in self.fractions), f"budget.fractions must be in (0, 1], got {self.fractions}")


class StopTraining(Exception):
    """Raised after a round whose line and checkpoint are written, when the budget says the run is over."""

    def __init__(self, server_round: int, reason: str) -> None:
        super().__init__(f"round {server_round}: {reason}")
        self.server_round, self.reason = server_round, reason


def _val(line: dict[str, Any], metric: str) -> float | None:
    value = line.get("val", {}).get(f"val_{metric}")
    return None if value is None else float(value)


def should_stop(lines: list[dict[str, Any]], metric: str, higher_is_better: bool, budget: BudgetConfig) -> str:
    """Why the run should stop after the last of ``lines`` (its metrics lines, round 0 first), or ''.

    Patience counts the rounds since the best validation value so far that beat every earlier one by at least
    ``min_delta`` (with ``watch_loss``, or since the lowest validation loss so far); rounds without a validation
    value neither improve nor count.
    """
    trained = [line for line in lines if line["round"] > 0]
    tokens = sum(c.get("tokens_seen", 0) for line in trained for c in line.get("clients", []))
    if budget.max_tokens and tokens >= budget.max_tokens:
        return f"budget.max_tokens={budget.max_tokens} reached ({tokens} tokens)"
    if not budget.patience or (lines and lines[-1]["round"] < budget.min_rounds):
        return ""
    best, lowest_loss, since = None, None, 0
    for line in lines:
        value = _val(line, metric)
        if value is None:
            continue
        gain = (value - best if higher_is_better else best - value) if best is not None else float("inf")
        improved = gain >= budget.min_delta and (best is None or gain > 0)
        if improved:
            best = value
        loss = _val(line, "loss") if budget.watch_loss else None
        if loss is not None and (lowest_loss is None or loss < lowest_loss):
            lowest_loss, improved = loss, True
        since = 0 if improved else since + 1
    if since >= budget.patience:
        return f"no better validation {metric} for budget.patience={budget.patience} rounds"
    return ""


def reached(value: float, target: float, fraction: float, higher_is_better: bool) -> bool:
    """Whether ``value`` is within ``fraction`` of ``target`` (for a loss: at most target / fraction)."""
    return value >= fraction * target if higher_is_better else value <= target / fraction


def time_to_target(lines: list[dict[str, Any]], metric: str, higher_is_better: bool, target: float,
                   fractions: list[float]) -> dict[str, dict[str, float] | None]:
    """For each fraction: the round, local steps, tokens, bytes (up + down) and wall seconds it took the
    validation metric to first reach that fraction of ``target``; None where it never did."""
    out: dict[str, dict[str, float] | None] = {}
    for fraction in fractions:
        cost = {"round": 0.0, "local_steps": 0.0, "tokens": 0.0, "bytes": 0.0, "seconds": 0.0}
        out[f"{fraction:g}"] = None
        for line in lines:
            if line["round"] > 0:
                clients = line.get("clients", [])
                cost["round"] = float(line["round"])
                cost["local_steps"] += sum(c.get("local_steps", 0) for c in clients)
                cost["tokens"] += sum(c.get("tokens_seen", 0) for c in clients)
                cost["bytes"] += line.get("bytes_up", 0) + line.get("bytes_down", 0)
                cost["seconds"] += line.get("wall_time_s", 0.0)
            value = _val(line, metric)
            if value is not None and reached(value, target, fraction, higher_is_better):
                out[f"{fraction:g}"] = dict(cost)
                break
    return out
