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
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)

from ffm.config import StrategyConfig, _check, _f
from ffm.strategies.spec import FlowerStrategy

__all__ = ["FLOWER_STRATEGIES"]


@dataclass
class FedAvgConfig(StrategyConfig):
    name: str = "fedavg"


@dataclass
class FedAvgMConfig(StrategyConfig):
    name: str = "fedavgm"
    server_learning_rate: float = _f(1.0, "server step size on the averaged update")
    server_momentum: float = _f(0.9, "server momentum (0 = FedAvg when server_learning_rate is 1)")


@dataclass
class FedAdamConfig(StrategyConfig):
    name: str = "fedadam"
    eta: float = _f(1e-2, "server learning rate")
    eta_l: float = _f(1e-1, "client learning rate Flower records (ffm clients use train.lr)")
    beta_1: float = _f(0.9, "first-moment decay")
    beta_2: float = _f(0.99, "second-moment decay")
    tau: float = _f(1e-3, "adaptivity (added to the root of the second moment)")


@dataclass
class FedYogiConfig(FedAdamConfig):
    name: str = "fedyogi"


@dataclass
class FedAdagradConfig(StrategyConfig):
    name: str = "fedadagrad"
    eta: float = _f(1e-2, "server learning rate")
    eta_l: float = _f(1e-1, "client learning rate Flower records (ffm clients use train.lr)")
    tau: float = _f(1e-3, "adaptivity (added to the root of the second moment)")


@dataclass
class FedMedianConfig(StrategyConfig):
    name: str = "fedmedian"


@dataclass
class FedTrimmedAvgConfig(StrategyConfig):
    name: str = "fedtrimmedavg"
    beta: float = _f(0.2, "share of the lowest and of the highest values cut per coordinate, in [0, 0.5)")

    def __post_init__(self) -> None:
        _check(0.0 <= self.beta < 0.5, f"strategy.beta must be in [0, 0.5), got {self.beta}")


@dataclass
class KrumConfig(StrategyConfig):
    name: str = "krum"
    num_malicious_nodes: int = _f(0, "attackers the rule must tolerate (f)")


@dataclass
class MultiKrumConfig(KrumConfig):
    name: str = "multikrum"
    num_nodes_to_select: int = _f(1, "updates averaged after Krum scoring (m)")


@dataclass
class BulyanConfig(KrumConfig):
    name: str = "bulyan"


FLOWER_STRATEGIES = {
    "fedavg": FlowerStrategy(FedAvg, FedAvgConfig),
    "fedavgm": FlowerStrategy(FedAvgM, FedAvgMConfig),
    "fedadam": FlowerStrategy(FedAdam, FedAdamConfig),
    "fedyogi": FlowerStrategy(FedYogi, FedYogiConfig),
    "fedadagrad": FlowerStrategy(FedAdagrad, FedAdagradConfig),
    "fedmedian": FlowerStrategy(FedMedian, FedMedianConfig),
    "fedtrimmedavg": FlowerStrategy(FedTrimmedAvg, FedTrimmedAvgConfig),
    "krum": FlowerStrategy(Krum, KrumConfig),
    "multikrum": FlowerStrategy(MultiKrum, MultiKrumConfig),
    "bulyan": FlowerStrategy(Bulyan, BulyanConfig),
}
