"""How LoRA adapters federate: exact aggregation (FedEx-LoRA) and heterogeneous ranks (HetLoRA-style).

**Exact aggregation** (``method.aggregation=exact``). Averaging A and B separately is not the average of the
clients' products: mean(B_i) mean(A_i) != mean(B_i A_i). Following FedEx-LoRA (Singhal et al. 2025), the
server keeps the adapters' plain averages and folds the error

    residual = scaling * (sum_i p_i B_i A_i - B_avg A_avg)        (p_i: example weights)

into the frozen base weight of every adapted module, cumulatively. The global state then carries one extra
entry per adapted module, ``base-delta:<module>.base_layer.weight`` (the sum of all residuals so far): every
client and the server's evaluation add it to the pristine base before use, so the global model's effective
weights are exactly the example-weighted mean of the clients' effective weights. Cost: those entries are full
d x k matrices and travel DOWN every round (for MiniLM with query+value adapters: 12 x 384 x 384 floats,
about 7 MB per client per round against ~0.1 MB of adapters); clients never send them back. The run's
``bytes_down`` counts them.

**Heterogeneous ranks** (``method.client_ranks``). Every model holds adapters of the largest rank
``method.r``; a client of rank r_i (tiers by partition id, round-robin) uses only the first r_i components:
it keeps A[r_i:] and B[:, r_i:] at zero while it trains (its gradients there are masked). Only its own rank
travels: the server sends it A[:r_i] and B[:, :r_i] and it replies with its rank-r_i adapter
(:func:`trim_rank` / :func:`pad_rank`). How the server combines the ranks (``method.rank_aggregation``):

- ``mean`` (HetLoRA-style): component j of the global adapter is the example-weighted mean over the clients
  with r_i > j. With equal ranks this is plain FedAvg.
- ``flexlora`` (FlexLoRA, Bai et al. 2024): the example-weighted mean of the clients' products B_i A_i, then its
  truncated SVD as the global adapter (B = U sqrt(S), A = sqrt(S) V^T, components by falling singular value);
  a client of rank r_i then receives the first r_i components: the best rank-r_i approximation of the mean.
- ``stack`` (FLoRA, Wang et al. 2024): the mean of the products exactly (stacking the clients' A and B makes
  their weighted sum one product) goes into the frozen base as a ``base-delta:`` entry, and the adapters
  start again from their initial values each round, so the global model is exactly the mean of the clients'
  models. The deltas travel down as exact aggregation's do (full matrices).

This module holds the model side (used by the ClientApp and the workspace); the server side is
:mod:`ffm.methods.lora_aggregation`, and :class:`ffm.methods.lora.Lora` wires both into the job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from ffm.keys import BASE_DELTA_PREFIX

__all__ = [
    "RANK_KEY",
    "apply_base_delta",
    "client_rank",
    "lora_pairs",
    "pad_rank",
    "rank_mask_hook",
    "trim_rank",
    "truncate_rank",
]

RANK_KEY = "lora-rank"  # a client's adapter rank, in its train metrics (heterogeneous ranks)
_A = re.compile(r"^(?P<module>.+)\.lora_A\.(?P<adapter>[^.]+)\.weight$")


def lora_pairs(names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """{module: (its lora_A key, its lora_B key)} for every adapted module among ``names``."""
    names = set(names)
    pairs = {}
    for name in names:
        match = _A.match(name)
        if match:
            b = f"{match['module']}.lora_B.{match['adapter']}.weight"
            if b in names:
                pairs[match["module"]] = (name, b)
    return pairs


def client_rank(ranks: list[int], party: int, full: int) -> int:
    """The rank of a party's tier (round-robin over ``method.client_ranks``; all ``full`` when it is empty)."""
    return ranks[party % len(ranks)] if ranks else full


def trim_rank(state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The state as a rank-``rank`` party's share travels: A[:rank] and B[:, :rank], the rest as it is."""
    out = dict(state)
    for a, b in lora_pairs(state).values():
        out[a], out[b] = state[a][:rank].clone(), state[b][:, :rank].clone()
    return out


def pad_rank(state: dict[str, torch.Tensor], full: int) -> dict[str, torch.Tensor]:
    """A trimmed share back at rank ``full``: the missing components are zero."""
    out = dict(state)
    for a, b in lora_pairs(state).values():
        rank = state[a].shape[0]
        if rank < full:
            out[a] = torch.cat([state[a], state[a].new_zeros(full - rank, state[a].shape[1])])
            out[b] = torch.cat([state[b], state[b].new_zeros(state[b].shape[0], full - rank)], dim=1)
    return out


@torch.no_grad()
def truncate_rank(model: nn.Module, rank: int) -> None:
    """Zero every adapter's components beyond ``rank``: A[rank:] and B[:, rank:]."""
    params = dict(model.named_parameters())
    for a, b in lora_pairs(params).values():
        params[a][rank:].zero_()
        params[b][:, rank:].zero_()


def rank_mask_hook(model: nn.Module, rank: int):
    """A gradient hook that keeps the components beyond ``rank`` where truncation put them (at zero)."""
    params = dict(model.named_parameters())
    pairs = [(params[a], params[b]) for a, b in lora_pairs(params).values()]

    def hook(_model: nn.Module) -> None:
        for a, b in pairs:
            if a.grad is not None:
                a.grad[rank:] = 0
            if b.grad is not None:
                b.grad[:, rank:] = 0

    return hook


@torch.no_grad()
def apply_base_delta(model: nn.Module, deltas: dict[str, torch.Tensor], pristine: dict[str, torch.Tensor]) -> None:
    """Set each adapted base weight to its pristine value plus its delta (``pristine`` is filled on first use).

    A module without a delta gets its pristine weight back, so a process that served an exact-aggregation job
    serves the next job with the backbone it loaded.
    """
    params = dict(model.named_parameters())
    wanted = {name[len(BASE_DELTA_PREFIX):]: value for name, value in deltas.items()}
    for name in set(wanted) | set(pristine):
        weight = params[name]
        if name not in pristine:
            pristine[name] = weight.detach().clone()
        delta = wanted.get(name)
        if delta is None:
            weight.copy_(pristine[name])
            continue
        if tuple(delta.shape) != tuple(weight.shape):  # Conv1D (GPT-2) stores its weight as (in, out)
            delta = delta.T
        weight.copy_(pristine[name] + delta.to(weight.dtype))
