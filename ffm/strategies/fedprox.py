"""FedProx (Li et al. 2020): local training pulled toward the round's global state by mu/2 * ||w - w_t||^2.

The server half is Flower's ``FedProx``, which only writes ``proximal-mu`` into the train config; the
client half (the proximal term) is here, applied through local training's penalty hook. With mu = 0 no
term is added at all, so FedProx then trains exactly as FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedProx
from torch import nn

from ffm.local_training import Penalty
from ffm.settings import option, require
from ffm.strategies.spec import FlowerSpec, StrategyConfig

__all__ = ["FEDPROX", "FedProxConfig", "proximal_term"]


@dataclass
class FedProxConfig(StrategyConfig):
    """FedProx's key: the weight of the proximal term."""

    name: str = "fedprox"
    proximal_mu: float = option(0.01, "weight mu of the proximal term (0 = FedAvg)")

    def __post_init__(self) -> None:
        require(self.proximal_mu >= 0.0, f"strategy.proximal_mu must be >= 0, got {self.proximal_mu}")


def proximal_term(model: nn.Module, global_state: dict[str, torch.Tensor], mu: float) -> Penalty:
    """mu/2 * sum over the travelling parameters of ||w - w_global||^2 (the global copy is a constant)."""
    params = [(p, global_state[name]) for name, p in model.named_parameters() if name in global_state]

    def term() -> torch.Tensor:
        return 0.5 * mu * sum(torch.sum((p - anchor) ** 2) for p, anchor in params)

    return term


class FedProxSpec(FlowerSpec):
    """Flower's FedProx on the server; the proximal term on the client."""

    client_correction = True

    def client_penalties(
        self, config: ConfigRecord, model: nn.Module, global_state: dict[str, torch.Tensor]
    ) -> list[Penalty]:
        mu = float(config.get("proximal-mu", 0.0))
        return [proximal_term(model, global_state, mu)] if mu > 0 else []


FEDPROX = FedProxSpec(FedProx, FedProxConfig, plain_mean=True)
