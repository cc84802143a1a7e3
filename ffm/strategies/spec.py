"""A registered strategy: its typed config, how the server builds it, and its client-side rule.

Both halves of an algorithm live together: ``build`` makes the server's Flower ``Strategy`` and
``client_penalties`` gives the loss terms a client adds during local training (FedProx's proximal term;
none for most), read from the train config the server sent, so the server decides and the client obeys.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import Strategy
from torch import nn

from ffm.config import FederationConfig, StrategyConfig
from ffm.local_training import Penalty

__all__ = ["FlowerStrategy", "StrategySpec"]


class StrategySpec:
    config: ClassVar[type[StrategyConfig]] = StrategyConfig

    def build(self, cfg: StrategyConfig, fed: FederationConfig) -> Strategy:
        raise NotImplementedError

    def client_penalties(
        self, config: ConfigRecord, model: nn.Module, global_state: dict[str, torch.Tensor]
    ) -> list[Penalty]:
        """Extra loss terms of this algorithm's client rule (default: none, plain local training)."""
        return []


class FlowerStrategy(StrategySpec):
    """One of Flower's strategies; the config's own fields are passed as the constructor's keywords."""

    def __init__(self, strategy: type[Strategy], config: type[StrategyConfig], **fixed: Any) -> None:
        self.strategy = strategy
        self.config = config  # type: ignore[misc]  # per instance: one class serves every Flower strategy
        self.fixed = fixed

    def build(self, cfg: StrategyConfig, fed: FederationConfig) -> Strategy:
        own = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "name"}
        return self.strategy(
            fraction_train=fed.fraction_train,
            fraction_evaluate=fed.fraction_evaluate,
            # ffm runs federations of any size (>= 1 node); Flower's defaults wait for 2.
            min_train_nodes=1,
            min_evaluate_nodes=int(fed.fraction_evaluate > 0),
            min_available_nodes=1,
            **own,
            **self.fixed,
        )
