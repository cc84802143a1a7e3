"""Membership-inference audit of a finished run (``ffm audit RUN_DIR``): what privacy the training bought.

Targets are training examples the final model saw (members: the clients' training splits; for the
local-only baseline each party's own model and its own examples) and as many held-out test examples
(non-members). Two attacks, both scored as ROC AUC and TPR at 1% FPR:

- **loss threshold** (Yeom et al. 2018): a member has a lower loss;
- **LiRA, offline** (Carlini et al. 2022): ``shadows`` models are trained the job's way on data no target
  model saw (the test set minus the non-member targets); each target's loss is compared with its loss under
  the shadows, ``(mean_shadow - loss) / std_shadow``, which corrects for examples that are simply easy.

An AUC near 0.5 means the attack cannot tell members from non-members; ``mia_auc`` in the summary is the
stronger attack's. The result goes into ``summary.json`` (key ``audit``) and ``audit.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from ffm.config import job_from_dict
from ffm.errors import CheckpointError
from ffm.local_training import make_optimizer, train_steps
from ffm.run_dir import RunDirectory
from ffm.tasks import step_batches
from ffm.workspace import Workspace, workspace_for

__all__ = ["attack_metrics", "audit_run", "canary_audit_run"]


def attack_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """ROC AUC and the true-positive rate at 1% false positives of ``scores`` (higher = "member")."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(is_member, scores)
    return {"auc": float(roc_auc_score(is_member, scores)), "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max())}


def _sample(ds: datasets.Dataset, count: int, rng: np.random.Generator) -> tuple[datasets.Dataset, list[int]]:
    picked = sorted(rng.choice(len(ds), size=min(count, len(ds)), replace=False).tolist())
    return ds.select(picked), picked


def _find(tree: Any, key: str) -> Any:
    """The first value under ``key`` in nested checkpoint dicts (the local baseline's party states)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def _losses(ws: Workspace, state: dict[str, torch.Tensor], ds: datasets.Dataset) -> np.ndarray:
    ws.load(state)
    examples = ws.task.encode(ds, ws.tokenizer, ws.job.model.max_length)
    return ws.task.example_losses(ws.model, examples).numpy()


def _shadow_losses(ws: Workspace, pool: datasets.Dataset, targets: list[datasets.Dataset], shadows: int,
                   steps: int, seed: int) -> list[np.ndarray]:
    """(shadows, N) losses of every target under shadow models trained on random halves of ``pool``."""
    encoded = [ws.task.encode(t, ws.tokenizer, ws.job.model.max_length) for t in targets]
    out: list[list[np.ndarray]] = [[] for _ in targets]
    train = ws.job.train
    for k in range(shadows):
        rng = np.random.default_rng(seed * 7919 + k)
        half, _ = _sample(pool, max(1, len(pool) // 2), rng)
        ws.load(ws.initial_state)
        torch.manual_seed(seed * 7919 + k)
        optimizer = make_optimizer(ws.model, train.lr, train.weight_decay, train.optimizer, train.momentum, train.beta2)
        data = ws.task.encode(half, ws.tokenizer, ws.job.model.max_length)
        generator = torch.Generator().manual_seed(seed * 7919 + k)
        train_steps(ws.model, step_batches(data, train.batch_size, steps, generator), objective=ws.task.loss,
                    optimizer=optimizer, max_grad_norm=train.max_grad_norm)
        for i, examples in enumerate(encoded):
            out[i].append(ws.task.example_losses(ws.model, examples).numpy())
    return [np.stack(rows) for rows in out]


def audit_run(run_dir: str | Path, *, examples: int = 200, shadows: int = 0, shadow_steps: int = 0,
              seed: int = 0) -> dict[str, Any]:
    """Attack the final model(s) of the run in ``run_dir``; write and return the result."""
    run = RunDirectory(run_dir)
    raw = RunDirectory.read_config(run_dir)
    raw.update(run_dir=str(run_dir), resume=True, progress=False)
    job = job_from_dict(raw)
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise CheckpointError(f"'{run_dir}' has no checkpoint: run (or resume) it before auditing it")
    ws = workspace_for(job)
    if ws.data.test is None or not ws.data.clients:
        raise CheckpointError("ffm audit needs the whole split in this process (a simulation's data source)")
    rng = np.random.default_rng(seed)
    # as many non-members as members: the test set bounds both, and LiRA's shadows need half of it to train on
    examples = min(examples, len(ws.data.test) // (2 if shadows > 0 else 1))
    parties = _find(checkpoint.get("extra", {}), "states") if job.mode.keeps_party_models else None
    if parties:
        owners = {int(pid): state for pid, state in parties.items()}
        share = max(1, examples // len(owners))
        pairs = [(owners[pid], _sample(ws.data.clients[pid].train, share, rng)[0]) for pid in sorted(owners)]
    else:
        members_pool = datasets.concatenate_datasets([c.train for c in ws.data.clients])
        pairs = [(checkpoint["state"], _sample(members_pool, examples, rng)[0])]
    n_members = sum(len(ds) for _, ds in pairs)  # at most len(test): every party's share is examples // parties
    nonmembers, picked = _sample(ws.data.test, n_members, rng)
    # each party's model faces its own members and an equal share of the non-members
    cuts = np.cumsum([0] + [len(ds) for _, ds in pairs])
    groups = [(state, members, nonmembers.select(range(cuts[i], min(cuts[i + 1], len(nonmembers)))))
              for i, (state, members) in enumerate(pairs)]
    member_loss = np.concatenate([_losses(ws, s, m) for s, m, _ in groups])
    outsider_loss = np.concatenate([_losses(ws, s, o) for s, _, o in groups])
    is_member = np.r_[np.ones(len(member_loss)), np.zeros(len(outsider_loss))]
    result: dict[str, Any] = {
        "members": len(member_loss), "nonmembers": len(outsider_loss), "seed": seed,
        "loss_attack": attack_metrics(-np.r_[member_loss, outsider_loss], is_member),
        "mean_loss": {"members": float(member_loss.mean()), "nonmembers": float(outsider_loss.mean())},
        "lira": None,
    }
    if shadows > 0:
        unused = sorted(set(range(len(ws.data.test))) - set(picked))
        pool = ws.data.test.select(unused)
        steps = shadow_steps or _target_steps(ws)
        targets = [m for _, m, _ in groups] + [o for _, _, o in groups]
        per_target = _shadow_losses(ws, pool, targets, shadows, steps, seed)
        shadow = np.concatenate(per_target, axis=1)  # (shadows, members + nonmembers)
        spread = shadow.std(axis=0) if shadows > 1 else np.full(shadow.shape[1], shadow.std())
        spread = np.maximum(spread, max(1e-6, float(shadow.std()) * 0.1))
        observed = np.r_[member_loss, outsider_loss]
        scores = (shadow.mean(axis=0) - observed) / spread
        result["lira"] = {**attack_metrics(scores, is_member), "shadows": shadows, "shadow_steps": steps,
                          "shadow_pool": len(pool)}
    attacks = [result["loss_attack"]] + ([result["lira"]] if result["lira"] else [])
    result["mia_auc"] = max(a["auc"] for a in attacks)
    result["tpr_at_1pct_fpr"] = max(a["tpr_at_1pct_fpr"] for a in attacks)
    _write(run, result)
    return result


def _target_steps(ws: Workspace) -> int:
    """A shadow trains as long as the whole federation did in one round times the rounds (centralized's budget)."""
    job = ws.job
    per_client = job.train.local_steps or math.ceil(
        sum(len(c.train) for c in ws.data.clients) / len(ws.data.clients) / job.train.batch_size)
    sampled = max(1, round(len(ws.data.clients) * job.federation.fraction_train))
    return max(1, job.federation.rounds * per_client * sampled)


def canary_audit_run(run_dir: str | Path) -> dict[str, Any]:
    """The one-run canary audit (:mod:`ffm.privacy.canaries`) of a finished run with ``privacy.canaries``."""
    from ffm.privacy.canaries import audit

    run = RunDirectory(run_dir)
    raw = RunDirectory.read_config(run_dir)
    raw.update(run_dir=str(run_dir), resume=True, progress=False)
    job = job_from_dict(raw)
    if not job.privacy.canaries:
        raise CheckpointError(f"'{run_dir}' ran without canaries: rerun it with privacy.canaries=M (e.g. 200)")
    files = sorted(run.checkpoints.glob("round-*.pt"))
    saved = [torch.load(f, weights_only=True) for f in files]
    rounds = [int(c["round"]) for c in saved]
    if not saved or rounds != list(range(1, len(rounds) + 1)):
        raise CheckpointError(f"the canary audit reads every round's checkpoint; {run.checkpoints} holds rounds "
                              f"{rounds}: rerun with checkpoint.keep_last=0")
    result = audit(job, [workspace_for(job).initial_state, *(c["state"] for c in saved)])
    _write(run, result, key="canary_audit")
    return result


def _write(run: RunDirectory, result: dict[str, Any], key: str = "audit") -> None:
    path = run.path / "audit.json"
    existing = json.loads(path.read_text()) if path.is_file() and key != "audit" else {}
    path.write_text(json.dumps({**existing, key: result} if key != "audit" else result, indent=2))
    summary_path = run.path / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        summary[key] = result
        run.write_summary(summary)
