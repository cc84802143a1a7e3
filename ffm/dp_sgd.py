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

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from torch import nn

from ffm.errors import ConfigError
from ffm.tasks.examples import Examples

__all__ = ["check_supported", "dp_sgd_epsilon", "dp_sgd_session", "poisson_batches"]


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
