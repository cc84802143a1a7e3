"""Sample-level DP-SGD for a client's local training, through Opacus (``privacy.dp_sgd=true``).

Each local step draws a Poisson sample of the client's examples (rate batch_size / N), Opacus computes every
example's gradient of the trainable parameters only (LoRA, the head, soft prompts: the frozen backbone has
none), clips each to ``privacy.sgd_clip`` and adds Gaussian noise of std ``privacy.sgd_noise_multiplier`` x
the clip. The client keeps its step count in its node state and reports its own epsilon (Opacus RDP) at
``privacy.delta`` after every round.

All virtual clients share ONE backbone, so Opacus's hooks and per-sample state live only for one client's
round: :func:`dp_sgd_session` adds them and removes every hook and ``grad_sample`` when the round ends
(tested), so nothing leaks from one client to the next. Methods: ``lora`` and ``bitfit`` (their trainable
layers are Linear and LayerNorm/bias terms). Any other method is a ConfigError before the run starts, never
a silently non-private or failing run: Opacus 1.6 computes no per-sample gradient for peft's IA3 vectors, and
wrong-sized ones (batch 1) for embeddings fed broadcast ids (BERT's position embeddings under full
fine-tuning, the virtual-token embeddings of prompt tuning / P-tuning).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from torch import nn

from ffm.errors import ConfigError
from ffm.methods import METHODS, build_method
from ffm.privacy.mechanism import Mechanism
from ffm.settings import CHECKS, Job, option, require
from ffm.strategies import STRATEGIES, strategy_spec
from ffm.tasks.examples import Examples

__all__ = ["DP_SGD", "DPSGDConfig", "check_supported", "dp_sgd_epsilon", "dp_sgd_session", "poisson_batches"]


@dataclass
class DPSGDConfig:
    """Sample-level DP-SGD in local training: per-example clipping and noise (Opacus)."""

    dp_sgd: bool = option(False, "sample-level DP-SGD in local training (Opacus): per-example clipping and noise")
    sgd_noise_multiplier: float = option(1.0, "dp_sgd: noise std on each step's summed gradient, in units of "
                                         "sgd_clip")
    sgd_clip: float = option(1.0, "dp_sgd: L2 bound on each example's gradient")
    sgd_lost_count: str = option("assume", "dp_sgd on a node whose saved state for the run is missing or "
                                 "unreadable past round 1 (it restarted without it): 'assume' it trained every "
                                 "earlier round at its full steps (a count that can only over-state what it spent, "
                                 "reported in the summary), or 'refuse' to train", choices=("assume", "refuse"))

    def __post_init__(self) -> None:
        require(not self.dp_sgd or (self.sgd_noise_multiplier > 0 and self.sgd_clip > 0),
                "privacy.sgd_noise_multiplier and privacy.sgd_clip must be > 0 with privacy.dp_sgd=true")


class DPSGD(Mechanism):
    """DP-SGD runs inside each client's local training; the server half is unchanged."""

    config = DPSGDConfig


DP_SGD = DPSGD()


def check_dp_sgd(job: Job) -> None:
    """DP-SGD's guarantee holds only for plain noisy steps of layers Opacus differentiates per example."""
    if not job.privacy.dp_sgd:
        return
    method = build_method(job.method)
    supported = " or ".join(name for name, cls in METHODS.items() if cls.dp_sgd)
    require(job.mode.trains, f"privacy.dp_sgd trains; mode={job.mode} does not")
    require(not strategy_spec(job).client_correction,
            f"privacy.dp_sgd=true with strategy.name={job.strategy.name}: DP-SGD's noisy per-example step would drop "
            "its client-side correction; use a rule without one ("
            f"{', '.join(n for n, s in STRATEGIES.items() if not s.client_correction)})")
    require(method.dp_sgd, f"privacy.dp_sgd=true supports method.name={supported}, not {job.method.name}: Opacus "
            "gives no per-sample gradients for peft's IA3 vectors, and wrong-sized ones for embeddings fed broadcast "
            "ids (BERT's positions under full fine-tuning, soft prompts' virtual tokens)")
    require(not method.parties_differ, f"privacy.dp_sgd=true: method.name={job.method.name} trains another shape "
            "of state on some parties (e.g. method.client_ranks), which DP-SGD cannot mask; use one shape")
    require(job.train.precision == "fp32",
            "train.precision=bf16 with privacy.dp_sgd=true: Opacus's per-example gradients need fp32; use fp32")


CHECKS.register("dp_sgd_fits_training", check_dp_sgd)


def check_supported(model: nn.Module, method: str) -> None:
    """Fail before the run when Opacus cannot give per-sample gradients for a trainable layer of ``model``."""
    try:
        GradSampleModule(model, loss_reduction="mean").cleanup()
    except NotImplementedError as exc:
        raise ConfigError(
            f"privacy.dp_sgd=true: Opacus cannot compute per-sample gradients for a trainable layer of "
            f"method.name={method} ({str(exc).splitlines()[0]}); use lora or bitfit, "
            "whose trainable layers are Linear / LayerNorm"
        ) from None


@contextmanager
def dp_sgd_session(model: nn.Module, optimizer: torch.optim.Optimizer, *, noise_multiplier: float, clip: float,
                   expected_batch_size: int, seed: int) -> Iterator[tuple[nn.Module, torch.optim.Optimizer]]:
    """(the per-sample-gradient model, the DP optimizer) for one client's round; hooks removed on exit."""
    wrapped = GradSampleModule(model, loss_reduction="mean")
    dp_optimizer = DPOptimizer(optimizer, noise_multiplier=noise_multiplier, max_grad_norm=clip,
                               expected_batch_size=expected_batch_size, loss_reduction="mean",
                               generator=torch.Generator().manual_seed(seed))
    try:
        yield wrapped, dp_optimizer
    finally:
        wrapped.cleanup()
        for param in model.parameters():
            param.grad = None


def poisson_batches(data: Examples, sample_rate: float, steps: int, generator: torch.Generator
                    ) -> Iterator[dict[str, torch.Tensor]]:
    """``steps`` Poisson-sampled batches (each example in with probability ``sample_rate``); an empty draw is
    drawn again (its step still counts for the accountant, which only over-states epsilon)."""
    done = 0
    while done < steps:
        chosen = torch.nonzero(torch.rand(len(data), generator=generator) < sample_rate).flatten()
        if len(chosen) == 0:
            continue
        width = int(data.lengths[chosen].max())
        yield {key: value[chosen, :width] if key in data.sequence_keys else value[chosen]
               for key, value in data.tensors.items()}
        done += 1


def dp_sgd_epsilon(steps: int, sample_rate: float, noise_multiplier: float, delta: float) -> float:
    """Epsilon of ``steps`` DP-SGD steps of one client (Opacus RDP)."""
    if steps <= 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))
