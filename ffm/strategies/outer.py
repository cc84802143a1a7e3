"""Outer optimizers: the round's averaged change treated as a gradient (DiLoCo, Douillard et al. 2023; FedAvgM
with Nesterov momentum, Hsu et al. 2019), with a server learning-rate schedule.

Each round the clients start from x and return their trained states; FedAvg's weighted mean m of them gives
the pseudo-gradient g = x - m, and the server takes one SGD step on it, as ``torch.optim.SGD`` would:

    b = mu * b + g                 (b = g in the first round)
    d = g + mu * b  (Nesterov)     or   d = b  (heavy ball)
    x = x - lr_t * d,   lr_t = outer_lr x the schedule's factor at this round

DiLoCo's defaults are outer_lr 0.7, momentum 0.9, Nesterov: many local steps (H) between exchanges, then a
momentum step across rounds. With outer_lr 1 and momentum 0 the step is x - (x - m) = m: FedAvg, bit for bit
(the arithmetic runs in float64, where the subtraction of two float32 values is exact). The momentum buffer is
server state: it is checkpointed, so a resumed run continues bit-identically. Flower's FedAvgM has no Nesterov
variant ("no nesterov for now" in its source), so this is written here on top of its FedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedAvgM, Strategy

from ffm.federation import FederationConfig
from ffm.local_training import SCHEDULES, lr_factor
from ffm.settings import option, require
from ffm.strategies.spec import FlowerSpec, StrategyConfig
from ffm.strategies.state import load_strategy_state, strategy_state
from ffm.strategies.wrapper import StrategyWrapper

__all__ = ["DILOCO", "FEDAVGM", "DiLoCoConfig", "FedAvgMConfig", "OuterSGD", "outer_step"]


def outer_step(start: dict[str, torch.Tensor], mean: dict[str, torch.Tensor], buffer: dict[str, torch.Tensor] | None,
               *, lr: float, momentum: float, nesterov: bool
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the new global state, the new momentum buffer) of one outer SGD step from ``start`` toward ``mean``."""
    new_state, new_buffer = {}, {}
    for name, x in start.items():
        if not x.is_floating_point():
            new_state[name] = mean[name]
            continue
        gradient = x.double() - mean[name].double()
        b = gradient if buffer is None or name not in buffer else momentum * buffer[name].double() + gradient
        step = gradient + momentum * b if nesterov else b
        new_state[name] = (x.double() - lr * step).to(x.dtype)
        new_buffer[name] = b
    return new_state, new_buffer


class OuterSGD(StrategyWrapper):
    """An inner strategy's aggregate (Flower's FedAvg: sampling, weighting, metrics) followed by one outer SGD step
    on the pseudo-gradient. The inner strategy may itself be wrapped, e.g. in a DP wrapper: the step then acts on
    the noised mean, and the momentum never holds an un-noised update."""

    def __init__(self, inner: Strategy, *, outer_lr: float, outer_momentum: float, nesterov: bool,
                 schedule: str = "constant", warmup_rounds: int = 0, rounds: int = 1) -> None:
        super().__init__(inner)
        self.outer_lr, self.momentum, self.nesterov = outer_lr, outer_momentum, nesterov
        self.schedule, self.warmup_rounds, self.rounds = schedule, warmup_rounds, rounds
        self.buffer: dict[str, torch.Tensor] | None = None
        self._start: dict[str, torch.Tensor] = {}

    def lr_at(self, server_round: int) -> float:
        """The outer learning rate of a round under the schedule (rounds counted from 1)."""
        return self.outer_lr * lr_factor(server_round - 1, self.rounds, self.warmup_rounds, self.schedule)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self._start = arrays.to_torch_state_dict()
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is None:
            return None, metrics
        # The buffer sees no schedule: only the step's size follows it (torch's SGD under an LR scheduler).
        state, buffer = outer_step(self._start, arrays.to_torch_state_dict(), self.buffer,
                                   lr=self.lr_at(server_round), momentum=self.momentum, nesterov=self.nesterov)
        if self.momentum > 0:
            self.buffer = buffer
        return ArrayRecord(state), metrics

    def state_dict(self) -> dict[str, Any]:
        """The momentum buffer (and the inner strategy's state), for the checkpoint."""
        return {"buffer": None if self.buffer is None else {k: v.clone() for k, v in self.buffer.items()},
                "inner": strategy_state(self.inner)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.buffer = state.get("buffer")
        if "inner" in state:
            load_strategy_state(self.inner, state["inner"])


@dataclass
class DiLoCoConfig(StrategyConfig):
    """DiLoCo's outer optimizer (and the knobs of its recipe live in train: many local steps, high local lr)."""

    name: str = "diloco"
    outer_lr: float = option(0.7, "the outer SGD's learning rate on the pseudo-gradient (DiLoCo: 0.7)")
    outer_momentum: float = option(0.9, "the outer SGD's momentum (DiLoCo: 0.9)")
    nesterov: bool = option(True, "Nesterov momentum (DiLoCo: true); false = heavy ball, as FedAvgM")
    outer_schedule: str = option("constant", "the outer learning rate over the run's rounds", choices=SCHEDULES)
    outer_warmup: int = option(0, "rounds over which the outer learning rate warms up from 0")

    def __post_init__(self) -> None:
        require(self.outer_lr > 0 and 0 <= self.outer_momentum < 1 and self.outer_warmup >= 0,
                "strategy.outer_lr must be > 0, outer_momentum in [0, 1) and outer_warmup >= 0")


@dataclass
class FedAvgMConfig(StrategyConfig):
    """FedAvgM's server step and momentum, heavy ball (Flower's) or Nesterov (ffm's outer SGD)."""

    name: str = "fedavgm"
    server_learning_rate: float = option(1.0, "server step size on the averaged update")
    server_momentum: float = option(0.9, "server momentum (0 = FedAvg when server_learning_rate is 1)")
    nesterov: bool = option(False, "Nesterov momentum (ffm's outer SGD; false = Flower's FedAvgM, heavy ball)")

    def __post_init__(self) -> None:
        require(self.server_learning_rate > 0 and 0 <= self.server_momentum < 1,
                "strategy.server_learning_rate must be > 0 and strategy.server_momentum in [0, 1)")


class DiLoCoSpec(FlowerSpec):
    """DiLoCo: FedAvg plus the outer optimizer; its schedule spans ``federation.rounds``."""

    outer_on_mean = True

    def build(self, cfg: DiLoCoConfig, fed: FederationConfig) -> OuterSGD:
        return self.outer(cfg, fed)

    def outer(self, cfg: DiLoCoConfig, fed: FederationConfig) -> OuterSGD:
        """The outer step around a plain FedAvg (which a privacy mechanism may wrap first)."""
        return OuterSGD(FedAvg(**self.sampling(fed)), outer_lr=cfg.outer_lr, outer_momentum=cfg.outer_momentum,
                        nesterov=cfg.nesterov, schedule=cfg.outer_schedule, warmup_rounds=cfg.outer_warmup,
                        rounds=fed.rounds)


class FedAvgMSpec(FlowerSpec):
    """Flower's FedAvgM as it is, or (``nesterov=true``, or under client-level DP) the same step written as ffm's
    outer SGD around FedAvg."""

    outer_on_mean = True

    def build(self, cfg: FedAvgMConfig, fed: FederationConfig) -> Strategy:
        if not cfg.nesterov:
            return FedAvgM(server_learning_rate=cfg.server_learning_rate, server_momentum=cfg.server_momentum,
                           **self.sampling(fed))
        return self.outer(cfg, fed)

    def outer(self, cfg: FedAvgMConfig, fed: FederationConfig) -> OuterSGD:
        """The outer step around a plain FedAvg (heavy ball as Flower's FedAvgM, or Nesterov)."""
        return OuterSGD(FedAvg(**self.sampling(fed)), outer_lr=cfg.server_learning_rate,
                        outer_momentum=cfg.server_momentum, nesterov=cfg.nesterov)


DILOCO = DiLoCoSpec(FedAvg, DiLoCoConfig, mean_based=True, model_shaped_state=True)
FEDAVGM = FedAvgMSpec(FedAvgM, FedAvgMConfig, mean_based=True, model_shaped_state=True)
