"""Server-side strategy state in checkpoints: ``strategy_state`` / ``load_strategy_state`` for any strategy.

ffm's own strategies and wrappers have ``state_dict()`` / ``load_state_dict()`` (wrappers pass their inner
strategy's state through, so they compose in any order). Flower's strategies have none, so their state
is read from the attributes that Flower's rules carry from round to round: FedOpt's moments (``m_t``,
``v_t``), FedAvgM's ``momentum_vector``, both families' ``current_arrays`` and the DP wrappers' (adaptive)
``clipping_norm``; a Flower wrapper's inner rule (its ``strategy``) is saved under ``wrapped``. Values are
saved as torch tensors (bit-exact, and loadable with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

__all__ = ["FLOWER_STATE_ATTRIBUTES", "load_strategy_state", "strategy_state"]

FLOWER_STATE_ATTRIBUTES = ("current_arrays", "m_t", "v_t", "momentum_vector", "clipping_norm")


def _pack(value: Any) -> Any:
    if isinstance(value, ArrayRecord):
        return {"kind": "arrays", "items": {k: torch.from_numpy(a.numpy().copy()) for k, a in value.items()}}
    if isinstance(value, dict):
        return {"kind": "dict", "items": {k: torch.from_numpy(np.array(v)) for k, v in value.items()}}
    if isinstance(value, list):
        return {"kind": "list", "items": [torch.from_numpy(np.array(v)) for v in value]}
    return None if value is None else {"kind": "value", "items": value}


def _unpack(packed: Any) -> Any:
    if packed is None:
        return None
    kind, items = packed["kind"], packed["items"]
    if kind == "arrays":
        return ArrayRecord({k: Array(t.numpy()) for k, t in items.items()})
    if kind == "dict":
        return {k: t.numpy() for k, t in items.items()}
    if kind == "list":
        return [t.numpy() for t in items]
    return items


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """Everything the strategy carries between rounds (empty for stateless rules such as FedAvg)."""
    if hasattr(strategy, "state_dict"):
        return strategy.state_dict()
    state = {attr: _pack(getattr(strategy, attr)) for attr in FLOWER_STATE_ATTRIBUTES if hasattr(strategy, attr)}
    if isinstance(getattr(strategy, "strategy", None), Strategy):  # Flower's wrappers (DP) hold their rule here
        state["wrapped"] = strategy_state(strategy.strategy)
    return state


def load_strategy_state(strategy: Strategy, state: dict[str, Any]) -> None:
    """Restore what :func:`strategy_state` saved."""
    if hasattr(strategy, "load_state_dict"):
        strategy.load_state_dict(state)
        return
    for attr, packed in state.items():
        if attr == "wrapped" and isinstance(getattr(strategy, "strategy", None), Strategy):
            load_strategy_state(strategy.strategy, packed)
            continue
        if attr not in FLOWER_STATE_ATTRIBUTES or not hasattr(strategy, attr):
            raise ValueError(f"{type(strategy).__name__} has no state '{attr}'")
        setattr(strategy, attr, _unpack(packed))
