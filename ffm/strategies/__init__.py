"""Server strategies, registered by ``strategy.name`` (the one place a strategy name is matched).

Flower's own rules come with their typed keys (``flower.py``); an algorithm Flower lacks, or one with a
client half (``fedprox.py``, ``scaffold.py``; ``fednova.py`` is server-only), is one file with a
``StrategySpec`` plus one ``register`` line below.
"""

from __future__ import annotations

from ffm.registry import Registry
from ffm.strategies.fednova import FEDNOVA
from ffm.strategies.fedprox import FEDPROX
from ffm.strategies.flower import FLOWER_STRATEGIES
from ffm.strategies.guard import ARRAYS_KEY, METRICS_KEY, RoundLog, UpdateGuard
from ffm.strategies.local_only import LocalOnly
from ffm.strategies.offset import RoundOffset, round_seed
from ffm.strategies.scaffold import SCAFFOLD
from ffm.strategies.spec import ClientRule, FlowerStrategy, StrategySpec
from ffm.strategies.state import load_strategy_state, strategy_state
from ffm.strategies.wrapper import StrategyWrapper

__all__ = [
    "ARRAYS_KEY",
    "ClientRule",
    "METRICS_KEY",
    "STRATEGIES",
    "FlowerStrategy",
    "LocalOnly",
    "RoundLog",
    "RoundOffset",
    "StrategySpec",
    "StrategyWrapper",
    "UpdateGuard",
    "load_strategy_state",
    "round_seed",
    "strategy_state",
]

STRATEGIES: Registry[StrategySpec] = Registry("strategy.name")
for _name, _spec in FLOWER_STRATEGIES.items():
    STRATEGIES.register(_name, _spec)
STRATEGIES.register("fedprox", FEDPROX)
STRATEGIES.register("scaffold", SCAFFOLD)
STRATEGIES.register("fednova", FEDNOVA)
