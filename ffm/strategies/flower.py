"""Flower's own aggregation rules, each with its typed keys (named as Flower's constructor names them).

FedAvg (McMahan et al. 2017), FedAvgM (Hsu et al. 2019), FedOpt's FedAdam / FedYogi / FedAdagrad
(Reddi et al. 2021), FedMedian and FedTrimmedAvg (Yin et al. 2018), Krum / MultiKrum (Blanchard et al.
2017), Bulyan (El Mhamdi et al. 2018). FedProx has a client rule too, so it lives in ``fedprox.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)

from ffm.settings import option, require
from ffm.strategies.spec import FlowerSpec, StrategyConfig

__all__ = ["FLOWER_STRATEGIES"]


@dataclass
class FedAvgConfig(StrategyConfig):
    """FedAvg has no keys of its own: the federation section samples clients."""

    name: str = "fedavg"


@dataclass
class FedAdamConfig(StrategyConfig):
    """FedAdam's server learning rate, moment decays and adaptivity."""

    name: str = "fedadam"
    eta: float = option(1e-2, "server learning rate")
    eta_l: float = option(1e-1, "client learning rate Flower records (ffm clients use train.lr)")
    beta_1: float = option(0.9, "first-moment decay")
    beta_2: float = option(0.99, "second-moment decay")
    tau: float = option(1e-3, "adaptivity (added to the root of the second moment)")


@dataclass
class FedYogiConfig(FedAdamConfig):
    """FedYogi takes FedAdam's keys (Yogi's sign-based second moment)."""

    name: str = "fedyogi"


@dataclass
class FedAdagradConfig(StrategyConfig):
    """FedAdagrad's server learning rate and adaptivity."""

    name: str = "fedadagrad"
    eta: float = option(1e-2, "server learning rate")
    eta_l: float = option(1e-1, "client learning rate Flower records (ffm clients use train.lr)")
    tau: float = option(1e-3, "adaptivity (added to the root of the second moment)")


@dataclass
class FedMedianConfig(StrategyConfig):
    """FedMedian has no keys of its own."""

    name: str = "fedmedian"


@dataclass
class FedTrimmedAvgConfig(StrategyConfig):
    """FedTrimmedAvg's trimmed share per side."""

    name: str = "fedtrimmedavg"
    beta: float = option(0.2, "share of the lowest and of the highest values cut per coordinate, in [0, 0.5)")

    def __post_init__(self) -> None:
        require(0.0 <= self.beta < 0.5, f"strategy.beta must be in [0, 0.5), got {self.beta}")


@dataclass
class KrumConfig(StrategyConfig):
    """Krum's assumed number of attackers."""

    name: str = "krum"
    num_malicious_nodes: int = option(0, "attackers the rule must tolerate (f)")


@dataclass
class MultiKrumConfig(KrumConfig):
    """MultiKrum: Krum's keys plus how many updates are averaged."""

    name: str = "multikrum"
    num_nodes_to_select: int = option(1, "updates averaged after Krum scoring (m)")


@dataclass
class BulyanConfig(KrumConfig):
    """Bulyan takes Krum's keys."""

    name: str = "bulyan"


FLOWER_STRATEGIES = {
    "fedavg": FlowerSpec(FedAvg, FedAvgConfig, plain_mean=True),
    "fedadam": FlowerSpec(FedAdam, FedAdamConfig, mean_based=True, model_shaped_state=True),
    "fedyogi": FlowerSpec(FedYogi, FedYogiConfig, mean_based=True, model_shaped_state=True),
    "fedadagrad": FlowerSpec(FedAdagrad, FedAdagradConfig, mean_based=True, model_shaped_state=True),
    "fedmedian": FlowerSpec(FedMedian, FedMedianConfig),
    "fedtrimmedavg": FlowerSpec(FedTrimmedAvg, FedTrimmedAvgConfig),
    "krum": FlowerSpec(Krum, KrumConfig),
    "multikrum": FlowerSpec(MultiKrum, MultiKrumConfig),
    "bulyan": FlowerSpec(Bulyan, BulyanConfig),
}
