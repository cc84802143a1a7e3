"""A registered strategy: its typed config, how the server builds it, and its client-side rule.

Both halves of an algorithm live together: ``build`` makes the server's Flower ``Strategy`` and
``client_rule`` gives what a client does around its local training (a :class:`ClientRule`: loss terms such
as FedProx's proximal term, gradient corrections such as SCAFFOLD's, and extra records for the reply),
read from the message the server sent, so the server decides and the client obeys. Most rules add nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from torch import nn

from ffm.config import FederationConfig, StrategyConfig
from ffm.local_training import GradHook, Penalty

__all__ = ["ClientRule", "FlowerStrategy", "StrategySpec"]


@dataclass
class ClientRule:
    """An algorithm's client half for one train message: hooks into local training, then extra reply records."""

    penalties: list[Penalty] = field(default_factory=list)
    grad_hooks: list[GradHook] = field(default_factory=list)

    def finish(self, model: nn.Module, lr_sum: float) -> dict[str, ArrayRecord]:
        """After the local steps (``lr_sum``: their summed effective learning rate): records to add to the reply."""
        return {}


class StrategySpec:
    config: ClassVar[type[StrategyConfig]] = StrategyConfig
    assumes_sgd: ClassVar[bool] = False  # its math reads updates as plain SGD steps (the server warns otherwise)

    def build(self, cfg: StrategyConfig, fed: FederationConfig) -> Strategy:
        raise NotImplementedError

    def client_rule(
        self, content: RecordDict, model: nn.Module, global_state: dict[str, torch.Tensor], node_state: RecordDict
    ) -> ClientRule:
        """What this algorithm's client does around local training. ``node_state`` is the node's own
        ``Context.state`` (kept between rounds, never sent); ``content`` is the train message the server sent."""
        return ClientRule(penalties=self.client_penalties(content["config"], model, global_state))

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
            # ffm runs federations of any size (>= 1 node); Flower's defaults wait for 2. Usable updates
            # below federation.min_train_clients fail the round in ffm's guard (it also sees rejections).
            min_train_nodes=1,
            min_evaluate_nodes=int(fed.fraction_evaluate > 0),
            min_available_nodes=1,
            **own,
            **self.fixed,
        )
