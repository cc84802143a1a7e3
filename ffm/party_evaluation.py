"""The final model(s) measured where a comparison needs them (``train.eval_parties``).

Three figures the global test set cannot give:

- every party's own validation split (per-party fairness, and the validation metric a study chooses
  hyper-parameters by: the same definition in every mode);
- a sample of the training data: train metric - test metric is the overfitting gap;
- the unseen parties (``data.unseen_fraction``): generalization to data owners that never trained.

For the local-only baseline each party's own model is measured on its own splits, and on the unseen parties
as the mean over the parties' models. Simulation only: the process must hold the parties' data (on a
Flower federation the server holds the test set alone, and this returns None).
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import torch

from ffm.workspace import Workspace

__all__ = ["evaluate_parties"]


def _measure(ws: Workspace, ds: datasets.Dataset) -> dict[str, float]:
    examples = ws.task.encode(ds, ws.tokenizer, ws.job.model.max_length)
    return ws.task.evaluate(ws.model, examples, ws.job.train.eval_batch_size)


def _sample(ds: datasets.Dataset, count: int, seed: int) -> datasets.Dataset:
    if count <= 0 or count >= len(ds):
        return ds
    return ds.select(sorted(np.random.default_rng(seed).choice(len(ds), size=count, replace=False).tolist()))


def _mean(results: list[dict[str, float]], key: str) -> float:
    """Example-weighted mean of ``key`` over evaluations."""
    total = sum(r["num-examples"] for r in results)
    return sum(r[key] * r["num-examples"] for r in results) / max(1, total)


def evaluate_parties(
    ws: Workspace, state: dict[str, torch.Tensor], party_states: dict[int, dict[str, torch.Tensor]] | None = None,
    personal: dict[int, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any] | None:
    """Train, per-party validation and unseen-party figures of the final model (or the parties' own models).

    With ``personal`` (each party's kept part, ``method.personal``: FedPer / FedRep style) every party's
    validation split is also measured with the global state plus its own part, beside the global model alone
    (the initial personal part): what personalization buys each party.
    """
    data = ws.data
    if not data.clients:
        return None
    metric = ws.task.primary_metric
    budget = ws.job.train.eval_train_examples
    own = [party_states[pid] for pid in range(len(data.clients))] if party_states else None
    val: list[dict[str, float]] = []
    train: list[dict[str, float]] = []
    if own is None:
        ws.load(state)
        pooled_train = datasets.concatenate_datasets([c.train for c in data.clients])
        train.append(_measure(ws, _sample(pooled_train, budget, ws.job.seed)))
    for pid, client in enumerate(data.clients):
        if own is not None:
            ws.load(own[pid])
            share = max(1, budget // len(data.clients)) if budget else 0
            train.append(_measure(ws, _sample(client.train, share, ws.job.seed + pid)))
        val.append(_measure(ws, client.val))
    result: dict[str, Any] = {
        "metric": metric,
        f"train_{metric}": _mean(train, metric),
        "train_loss": _mean(train, "loss"),
        "train_examples": int(sum(r["num-examples"] for r in train)),
        f"val_{metric}": _mean(val, metric),
        "val_loss": _mean(val, "loss"),
        f"party_val_{metric}": {str(pid): r[metric] for pid, r in enumerate(val)},
        "unseen_parties": len(data.unseen),
    }
    if personal:
        mine = []
        for pid, client in enumerate(data.clients):
            ws.load(state, personal.get(pid))
            mine.append(_measure(ws, client.val))
        result[f"val_personal_{metric}"] = _mean(mine, metric)
        result[f"party_val_personal_{metric}"] = {str(pid): r[metric] for pid, r in enumerate(mine)}
    if data.unseen:
        unseen = datasets.concatenate_datasets([d for c in data.unseen for d in (c.train, c.val)])
        scores = []
        for party_state in own or [state]:
            ws.load(party_state)
            scores.append(_measure(ws, unseen))
        result[f"unseen_{metric}"] = sum(s[metric] for s in scores) / len(scores)
        result["unseen_loss"] = sum(s["loss"] for s in scores) / len(scores)
        result["unseen_examples"] = len(unseen)
    return result
