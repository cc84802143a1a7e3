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

from ffm.federation import FederationConfig
from ffm.local_training import GradHook, Penalty
from ffm.registry import Registry
from ffm.settings import option

__all__ = ["STRATEGIES", "ClientRule", "FlowerSpec", "StrategyConfig", "StrategySpec"]


@dataclass
class StrategyConfig:
    """Base of every strategy's config; a strategy registers a subclass with its own keys."""

    name: str = option("fedavg", "server aggregation rule; registered")


@dataclass
class ClientRule:
    """An algorithm's client half for one train message: hooks into local training, then extra reply records."""

    penalties: list[Penalty] = field(default_factory=list)
    grad_hooks: list[GradHook] = field(default_factory=list)

    def finish(self, model: nn.Module, lr_sum: float) -> dict[str, ArrayRecord]:
        """After the local steps (``lr_sum``: their summed effective learning rate): records to add to the reply."""
        return {}


class StrategySpec:
    """A registered strategy: its config, how the server builds it, its client rule, and its capabilities.

    Capabilities (read by the rules that span sections, never the strategy's name):

    - ``plain_mean``: the aggregate IS the weighted mean of the replies (what secure aggregation's sum, DP-FedAvg's
      noised mean and LoRA's exact aggregation need);
    - ``mean_based``: the aggregate depends on the replies only through their weighted mean (so it can be folded
      from a running sum as they arrive: streaming aggregation);
    - ``model_shaped_state``: the server keeps state shaped like the model between rounds (moments, momentum,
      control variates), which a head that grows between stages would break;
    - ``client_correction``: its client rule changes local training (a proximal term, a gradient correction);
    - ``assumes_sgd``: its math reads updates as plain SGD steps (the server warns otherwise).
    """

    config: ClassVar[type[StrategyConfig]] = StrategyConfig
    plain_mean: ClassVar[bool] = False
    mean_based: ClassVar[bool] = False
    model_shaped_state: ClassVar[bool] = False
    client_correction: ClassVar[bool] = False
    assumes_sgd: ClassVar[bool] = False
    outer_on_mean: ClassVar[bool] = False  # an outer step on a plain mean (``outer(cfg, fed)`` builds it with the
    # mean inside, so that a privacy mechanism can wrap the mean and the step acts on the noised one)

    def build(self, cfg: StrategyConfig, fed: FederationConfig) -> Strategy:
        """The server's Flower Strategy for this config and federation."""
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


class FlowerSpec(StrategySpec):
    """One of Flower's strategies; the config's own fields are passed as the constructor's keywords, and the
    capabilities are given per instance (one class serves every Flower strategy)."""

    def __init__(self, strategy: type[Strategy], config: type[StrategyConfig], *, plain_mean: bool = False,
                 mean_based: bool = False, model_shaped_state: bool = False, **fixed: Any) -> None:
        self.strategy = strategy
        self.config = config  # type: ignore[misc]
        self.plain_mean = plain_mean  # type: ignore[misc]
        self.mean_based = mean_based or plain_mean  # type: ignore[misc]
        self.model_shaped_state = model_shaped_state  # type: ignore[misc]
        self.fixed = fixed

    def build(self, cfg: StrategyConfig, fed: FederationConfig) -> Strategy:
        own = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "name"}
        return self.strategy(**self.sampling(fed), **own, **self.fixed)

    @staticmethod
    def sampling(fed: FederationConfig) -> dict[str, Any]:
        """Flower's sampling keywords from the federation section."""
        return {
            # Poisson sampling draws the round's nodes itself (ffm.strategies.poisson): the rule takes them all
            "fraction_train": 1.0 if fed.sampling == "poisson" else fed.fraction_train,
            "fraction_evaluate": fed.fraction_evaluate,
            # ffm runs federations of any size (>= 1 node); Flower's defaults wait for 2. Usable updates
            # below federation.min_train_clients fail the round in ffm's guard (it also sees rejections).
            "min_train_nodes": 1,
            "min_evaluate_nodes": int(fed.fraction_evaluate > 0),
            "min_available_nodes": 1,
        }


STRATEGIES: Registry[StrategySpec] = Registry("strategy.name")
"""Strategies by ``strategy.name``: one file with a ``StrategySpec`` plus one ``STRATEGIES.register`` line."""
