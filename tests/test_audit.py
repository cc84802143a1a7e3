"""Membership-inference audit: AUC and TPR at low FPR of a loss attack and offline LiRA on a finished run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ffm.audit import attack_metrics, audit_run
from ffm.cli import main
from ffm.runtime import run_local


def test_attack_metrics_of_separated_and_of_reversed_scores():
    members = np.r_[np.ones(50), np.zeros(50)]
    perfect = attack_metrics(np.r_[np.full(50, 2.0), np.full(50, 1.0)], members)
    assert perfect == {"auc": 1.0, "tpr_at_1pct_fpr": 1.0}
    assert attack_metrics(np.r_[np.full(50, 1.0), np.full(50, 2.0)], members)["auc"] == 0.0


def test_a_model_that_never_learned_its_members_gives_an_auc_near_one_half(job_factory):
    job = job_factory("frozen", train__lr=1e-12, data__max_examples=300)  # training moves nothing
    run_local(job)

    result = audit_run(job.run_dir, examples=60)

    n1, n2 = result["members"], result["nonmembers"]
    assert n1 == n2 == 60
    null_sd = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))  # the AUC's spread when nothing separates them
    assert abs(result["loss_attack"]["auc"] - 0.5) < 3.5 * null_sd
    summary = json.loads((Path(job.run_dir) / "summary.json").read_text())
    assert summary["audit"]["mia_auc"] == result["mia_auc"]


def test_lira_trains_shadows_on_data_no_target_model_saw_and_scores_every_target(job_factory):
    job = job_factory("lira", data__max_examples=300, train__lr=0.05)
    run_local(job)

    result = audit_run(job.run_dir, examples=30, shadows=2, shadow_steps=3)

    lira = result["lira"]
    assert lira["shadows"] == 2 and lira["shadow_steps"] == 3
    assert lira["shadow_pool"] == 60 - 30  # the test set without the non-member targets
    capped = audit_run(job.run_dir, examples=500, shadows=1, shadow_steps=1)
    assert capped["members"] == 30 and capped["lira"]["shadow_pool"] == 30  # half the test set stays for shadows
    assert 0.0 <= lira["auc"] <= 1.0 and result["mia_auc"] == max(lira["auc"], result["loss_attack"]["auc"])


def test_the_local_baseline_is_attacked_with_each_partys_own_model(job_factory):
    job = job_factory("local", mode="local", data__max_examples=300)
    run_local(job)

    result = audit_run(job.run_dir, examples=30)

    assert result["members"] == result["nonmembers"] == 30  # 10 per party of 3
    capped = audit_run(job.run_dir, examples=500)  # more than the 60 test examples: as many as there are
    assert capped["members"] == capped["nonmembers"] == 60


def test_ffm_audit_prints_and_records_the_attack(job_factory, capsys):
    job = job_factory("cli", data__max_examples=300)
    run_local(job)

    assert main(["audit", job.run_dir, "--examples", "20"]) == 0

    assert "loss_attack  AUC" in capsys.readouterr().out
    assert (Path(job.run_dir) / "audit.json").is_file()


def test_auditing_a_run_without_checkpoints_is_a_clear_error(job_factory, tmp_path, capsys):
    job = job_factory("empty")
    Path(job.run_dir).mkdir(parents=True)
    (Path(job.run_dir) / "config.yaml").write_text("mode: federated\n")
    assert main(["audit", job.run_dir]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(Exception, match="no checkpoint"):
        audit_run(job.run_dir)


def test_a_language_model_is_audited_on_its_text_blocks(job_factory):
    from test_language_models import _lm_job

    job = _lm_job(job_factory, "lm", "causal_lm", "gpt2", federation__rounds=1, train__local_steps=2)
    run_local(job)

    result = audit_run(job.run_dir, examples=20)

    assert result["members"] > 0 and result["nonmembers"] > 0
    assert 0.0 <= result["loss_attack"]["auc"] <= 1.0
