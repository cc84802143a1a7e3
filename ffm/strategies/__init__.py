"""Server strategies, registered by ``strategy.name`` (the one place a strategy name is matched).

Flower's own rules come with their typed keys (``flower.py``); an algorithm Flower lacks, or one with a
client half (``fedprox.py``, ``scaffold.py``; ``fednova.py`` is server-only), is one file with a
``StrategySpec`` plus one ``register`` line below. The wrappers every job's rule runs inside (the guard that
rejects bad updates, round numbering after a resume, the local-only baseline) live here too.
"""

from __future__ import annotations

from ffm.settings import Job
from ffm.strategies.fednova import FEDNOVA
from ffm.strategies.fedprox import FEDPROX
from ffm.strategies.flower import FLOWER_STRATEGIES
from ffm.strategies.guard import RoundLog, UpdateGuard
from ffm.strategies.local_only import LocalOnly
from ffm.strategies.offset import RoundOffset
from ffm.strategies.outer import DILOCO, FEDAVGM, OuterSGD
from ffm.strategies.scaffold import SCAFFOLD
from ffm.strategies.spec import STRATEGIES, ClientRule, FlowerSpec, StrategyConfig, StrategySpec
from ffm.strategies.state import load_strategy_state, strategy_state
from ffm.strategies.wrapper import StrategyWrapper

__all__ = [
    "STRATEGIES",
    "ClientRule",
    "FlowerSpec",
    "LocalOnly",
    "OuterSGD",
    "RoundLog",
    "RoundOffset",
    "StrategyConfig",
    "StrategySpec",
    "StrategyWrapper",
    "UpdateGuard",
    "load_strategy_state",
    "strategy_spec",
    "strategy_state",
]

for _name, _spec in FLOWER_STRATEGIES.items():
    STRATEGIES.register(_name, _spec)
STRATEGIES.register("fedprox", FEDPROX)
STRATEGIES.register("scaffold", SCAFFOLD)
STRATEGIES.register("fednova", FEDNOVA)
STRATEGIES.register("fedavgm", FEDAVGM)
STRATEGIES.register("diloco", DILOCO)


def strategy_spec(job: Job) -> StrategySpec:
    """The registered spec of a job's ``strategy.name`` (its capabilities, config and builder)."""
    return STRATEGIES[job.strategy.name]
