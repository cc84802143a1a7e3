"""FedKSeed's server half: the round's history row from the clients' step records, applied to the global model.

The replies carry (seed index, lr * g) per local step instead of a state; the row is the example-weighted sum
of the steps per seed, the server steps its own copy of the global model by it (exactly as every node will
when it replays the row) and sends the whole history down instead of the model. See
:mod:`ffm.methods.kseed_federation`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from ffm.keys import ARRAYS_KEY, METRICS_KEY
from ffm.methods.kseed_federation import (
    HISTORY_INDEX,
    HISTORY_ROUND,
    HISTORY_VALUE,
    STEP_COEF,
    STEP_INDEX,
    direction,
    history_rows,
)
from ffm.strategies.wrapper import StrategyWrapper

__all__ = ["KSeedAggregation", "history_record"]

logger = logging.getLogger("ffm")


def history_record(rows: list[dict[int, float]]) -> ArrayRecord:
    """The history as it travels: three flat arrays (round, seed index, value), one entry per used seed."""
    entries = [(r, j, v) for r, row in enumerate(rows, start=1) for j, v in sorted(row.items())]
    rounds, index, value = (np.array(col, dtype=dtype) for col, dtype in
                            zip(zip(*entries, strict=True) if entries else ((), (), ()),
                                (np.int32, np.int32, np.float32), strict=True))
    return ArrayRecord({HISTORY_ROUND: Array(rounds), HISTORY_INDEX: Array(index), HISTORY_VALUE: Array(value)})


def read_history(record: ArrayRecord) -> list[dict[int, float]]:
    """The rows a history record carries."""
    return history_rows(*(record[key].numpy() for key in (HISTORY_ROUND, HISTORY_INDEX, HISTORY_VALUE)))


class KSeedAggregation(StrategyWrapper):
    """Around FedAvg's sampling and evaluation: history down, step records up, the model stepped in seed space."""

    arrayrecord_key = None  # replies carry step records, checked by reply_problem

    def __init__(self, inner: Strategy, *, seeds: list[int], max_steps: int) -> None:
        super().__init__(inner)
        self.seeds, self.max_steps = seeds, max_steps
        self.rows: list[dict[int, float]] = []
        self._global: ArrayRecord | None = None

    def _with_history(self, messages: Iterable[Message]) -> list[Message]:
        record = history_record(self.rows)
        messages = list(messages)
        for msg in messages:  # the model itself never travels
            msg.content[ARRAYS_KEY] = record
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        return self._with_history(self.inner.configure_train(server_round, arrays, config, grid))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._with_history(self.inner.configure_evaluate(server_round, arrays, config, grid))

    def reply_problem(self, content: RecordDict) -> str | None:
        """Why a reply's step records are unusable (the update guard rejects it and logs this), or None."""
        if ARRAYS_KEY not in content.array_records or {STEP_INDEX, STEP_COEF} - set(content[ARRAYS_KEY]):
            return f"no step records ({STEP_INDEX}, {STEP_COEF}) in the reply"
        index, coef = (content[ARRAYS_KEY][key].numpy() for key in (STEP_INDEX, STEP_COEF))
        if index.ndim != 1 or index.shape != coef.shape or len(index) > self.max_steps:
            return f"step records of shapes {index.shape} and {coef.shape}: want two equal lists of at most " \
                   f"{self.max_steps} steps"
        if len(index) and (index.min() < 0 or index.max() >= len(self.seeds)):
            return f"a seed index outside 0..{len(self.seeds) - 1}"
        if not np.all(np.isfinite(coef)):
            return "a step that is not finite"
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contents = [m.content for m in replies if not m.has_error()]
        if not contents or self._global is None:
            return None, None
        examples = [float(c[METRICS_KEY]["num-examples"]) for c in contents]
        total = sum(examples)
        row: dict[int, float] = {}
        for content, n in zip(contents, examples, strict=True):
            index, coef = (content[ARRAYS_KEY][key].numpy() for key in (STEP_INDEX, STEP_COEF))
            for j, c in zip(index.tolist(), coef.tolist(), strict=True):
                row[int(j)] = row.get(int(j), 0.0) + n / total * c
        row = {j: float(np.float32(v)) for j, v in row.items() if v != 0.0 and math.isfinite(v)}  # as it travels
        self.rows.append(row)
        state = {k: v.clone() for k, v in self._global.to_torch_state_dict().items()}
        params = sorted(state.items())
        with torch.no_grad():
            for j in sorted(row):  # what every node does when it replays the row
                for param, z in direction(self.seeds[j], params):
                    param.add_(z, alpha=-row[j])
        metrics = aggregate_metricrecords(contents, "num-examples")
        return ArrayRecord(state), metrics

    def state_dict(self) -> dict[str, Any]:
        """The inner rule's state and the history (every node rebuilds the model from it)."""
        record = history_record(self.rows)
        return {"inner": super().state_dict()["inner"],
                "history": {k: torch.from_numpy(record[k].numpy().copy()) for k in record}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the inner rule's state and the history."""
        super().load_state_dict(state)
        history = state.get("history")
        if history:
            self.rows = history_rows(*(history[k].numpy() for k in (HISTORY_ROUND, HISTORY_INDEX, HISTORY_VALUE)))
