"""``ffm compare``: one study over modes, seeds and a grid; the choice on validation data; unseen parties."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from ffm.cli import main
from ffm.errors import ConfigError
from ffm.runtime import run_local
from ffm.study import StudyPlan, choose, load_results, paired_difference, save_results
from ffm.study.report import headline
from ffm.study.results import COLUMNS
from ffm.workspace import Workspace, workspace_for


def _tiny_config(tmp_path: Path, model_dir: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": str(model_dir), "max_length": 32},
        "data": {"source": "bbc_news", "max_examples": 90, "partitioner": "iid", "unseen_fraction": 0.34},
        "train": {"batch_size": 8, "local_steps": 2, "eval_batch_size": 32, "eval_train_examples": 40},
        "federation": {"num_clients": 3, "rounds": 2},
    }))
    return path


def _tiny_study(tmp: Path, tiny_model_dir: Path) -> tuple[Path, list[str]]:
    """2 modes x 2 learning rates of the tiny model, one seed (4 child runs; the choice over seeds and the paired
    interval are the unit tests' below)."""
    argv = ["compare", str(_tiny_config(tmp, tiny_model_dir)), "--seeds", "1", "--modes", "federated,centralized",
            "--grid", "train.lr=1e-4,3e-2", "--study-dir", str(tmp / "study"), "--audit-examples", "10",
            "--workers", "2"]
    assert main(argv) == 0
    return tmp / "study", argv


# One study serves every check below, in one test: pytest-xdist (3.8 under pytest 9) does not keep an
# xdist_group on one worker, so a shared session fixture ran the study once per worker (83 s each).
@pytest.mark.slow
def test_a_study_writes_its_runs_and_reports_chooses_on_validation_resumes_and_keeps_to_its_settings(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    study, argv = _tiny_study(tmp_path, tiny_model_dir)
    _every_run_and_report_file(study, argv)
    _each_mode_gets_the_grid_point_with_the_best_mean_validation_metric(study)
    _results_csv_round_trips_into_the_same_tables(study, tmp_path)
    _a_rerun_reuses_finished_runs_and_resumes_an_interrupted_one(study, argv)
    assert main([*argv, "federation.rounds=3"]) == 2  # a study dir refuses another study's shared settings


def _every_run_and_report_file(study: Path, argv: list[str]) -> None:
    runs = sorted(p.name for p in (study / "runs").iterdir() if p.is_dir())
    assert len(runs) == 4
    assert all((study / "runs" / r / "summary.json").is_file() for r in runs)
    for name in ("REPORT.md", "results.csv", "study.json", "accuracy_per_round.png", "overfitting_gap.png",
                 "party_accuracy.png", "accuracy_vs_bytes.png"):
        assert (study / name).stat().st_size > 0, name
    report = (study / "REPORT.md").read_text()
    assert "federated - centralized" in report and "What the numbers show" in report
    assert "Membership-inference AUC" in report  # every run was audited (ffm audit, loss attack)
    rows = load_results(study / "results.csv")
    assert all(0.0 <= r["mia_auc"] <= 1.0 for r in rows)
    assert f"`ffm {' '.join(argv)}`" in report


def _each_mode_gets_the_grid_point_with_the_best_mean_validation_metric(study: Path) -> None:
    rows = load_results(study / "results.csv")
    for (_, mode), grid in choose(rows).items():
        means = {}
        for point in {r["grid"] for r in rows if r["mode"] == mode}:
            vals = [r["val"] for r in rows if r["mode"] == mode and r["grid"] == point]
            means[point] = sum(vals) / len(vals)
        assert means[grid] == max(means.values())  # a tie goes by validation loss: the unit test's below
        # the choice never looks at the test metric: swapping test values leaves it unchanged
    shuffled = [dict(r, final_test=1.0 - (r["final_test"] or 0)) for r in rows]
    assert choose(shuffled) == choose(rows)


def _results_csv_round_trips_into_the_same_tables(study: Path, tmp_path: Path) -> None:
    rows = load_results(study / "results.csv")
    assert list(rows[0]) == COLUMNS
    save_results(rows, tmp_path / "again.csv")
    assert load_results(tmp_path / "again.csv") == rows
    assert headline(load_results(tmp_path / "again.csv")) == headline(rows)
    with (study / "results.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4


def _a_rerun_reuses_finished_runs_and_resumes_an_interrupted_one(study: Path, argv: list[str]) -> None:
    runs = study / "runs"
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    interrupted = runs / "federated-seed0-lr3e-2"
    (interrupted / "summary.json").unlink()  # as if killed after its last checkpoint, before the summary
    (interrupted / "study_run.json").unlink()
    assert main(argv) == 0
    after = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    redone = [name for name in after if after[name] != stamps.get(name)]
    assert redone == ["federated-seed0-lr3e-2"]
    record = json.loads((interrupted / "study_run.json").read_text())
    assert record["resumed"] and "resume=true" in record["command"]


def test_plan_names_runs_by_condition_mode_seed_and_grid_point() -> None:
    plan = StudyPlan(modes=["federated", "local"], seeds=[0, 1], grid={"train.lr": ["1e-3", "5e-3"]},
                     vary={"data.alpha": ["0.5", "0.1"]})
    names = [r.name for r in plan.runs()]
    assert len(names) == len(set(names)) == 16
    assert "alpha0.1-local-seed1-lr5e-3" in names
    with pytest.raises(ConfigError, match="--modes"):
        StudyPlan(modes=["federal"], seeds=[0])


def test_tuning_on_fewer_seeds_runs_the_grid_once_then_the_other_seeds_at_the_chosen_point() -> None:
    plan = StudyPlan(modes=["federated", "centralized"], seeds=[0, 1, 2], grid={"train.lr": ["1e-3", "5e-3"]},
                     tune_seeds=1)

    first = plan.runs()
    chosen = {("", "federated"): "train.lr=5e-3", ("", "centralized"): "train.lr=1e-3"}
    second = [r for r in plan.runs(chosen) if r not in first]

    assert sorted(r.name for r in first) == ["centralized-seed0-lr1e-3", "centralized-seed0-lr5e-3",
                                             "federated-seed0-lr1e-3", "federated-seed0-lr5e-3"]
    assert sorted(r.name for r in second) == ["centralized-seed1-lr1e-3", "centralized-seed2-lr1e-3",
                                              "federated-seed1-lr5e-3", "federated-seed2-lr5e-3"]
    with pytest.raises(ConfigError, match="--tune-seeds"):
        StudyPlan(modes=["federated"], seeds=[0], tune_seeds=2)


def test_the_choice_compares_grid_points_on_the_seeds_they_all_ran() -> None:
    def row(grid: str, seed: int, val: float) -> dict:
        return {"condition": "", "mode": "federated", "grid": grid, "seed": seed, "status": "done", "val": val,
                "higher_is_better": 1}

    # lr=1 won on seed 0; its later seeds score lower, but the point lr=2 never ran them: seed 0 decides
    rows = [row("lr=1", 0, 0.9), row("lr=2", 0, 0.8), row("lr=1", 1, 0.5), row("lr=1", 2, 0.5)]

    assert choose(rows) == {("", "federated"): "lr=1"}


def test_grid_points_that_tie_on_the_metric_are_told_apart_by_the_validation_loss() -> None:
    def row(grid: str, seed: int, val: float, loss: float | None) -> dict:
        return {"condition": "", "mode": "federated", "grid": grid, "seed": seed, "status": "done", "val": val,
                "val_loss": loss, "higher_is_better": 1}

    # 2e-3 and 8e-3 tie on accuracy (the same articles right); 2e-3 is surer of them: the loss decides, not the
    # grid's text (which would pick "8e-3")
    tied = [row("lr=2e-3", 0, 0.84, 0.41), row("lr=8e-3", 0, 0.84, 0.47), row("lr=5e-4", 0, 0.30, 0.20)]
    assert choose(tied) == {("", "federated"): "lr=2e-3"}
    # a better metric still wins whatever its loss
    assert choose([*tied, row("lr=1e-3", 0, 0.85, 0.90)]) == {("", "federated"): "lr=1e-3"}
    # runs written before the loss was recorded: the grid's text keeps the choice reproducible
    assert choose([dict(r, val_loss=None) for r in tied]) == {("", "federated"): "lr=8e-3"}


def test_paired_difference_has_a_t_interval_over_seeds() -> None:
    mean, _, hi, n = paired_difference({0: 0.9, 1: 0.8, 2: 0.85}, {0: 0.8, 1: 0.75, 2: 0.8})
    assert n == 3 and mean == pytest.approx(1 / 15)
    # t(0.975, 2) = 4.303; the differences 0.10, 0.05, 0.05 have sd 0.02887
    assert hi - mean == pytest.approx(4.3027 * 0.028868 / 3**0.5, rel=1e-3)
    assert paired_difference({0: 1.0}, {0: 0.5})[1] is None


def test_unseen_parties_never_train_and_are_measured(job_factory, carried, monkeypatch) -> None:
    job = job_factory(data__unseen_fraction=0.34, train__eval_parties=True)
    touched: list[tuple[str, int]] = []
    examples = Workspace.examples

    def record(self, split, party=0, stage=None):
        touched.append((split, party))
        return examples(self, split, party, stage)

    monkeypatch.setattr(Workspace, "examples", record)
    summary, _ = run_local(job)
    ws = workspace_for(job)
    assert len(ws.data.clients) == 3 and len(ws.data.unseen) == 1
    unseen_texts = set(ws.data.unseen[0].train["text"]) | set(ws.data.unseen[0].val["text"])
    assert not unseen_texts & {t for c in ws.data.clients for t in c.train["text"]}
    assert {party for split, party in touched if split == "train"} <= {0, 1, 2}
    trained = [int(reply.content["client"]["partition-id"]) for msg, reply in carried
               if msg.metadata.message_type == "train" and reply.has_content()]
    assert sorted(set(trained)) == [0, 1, 2]
    parties = summary["parties"]
    assert parties["unseen_parties"] == 1 and parties["unseen_examples"] == len(unseen_texts)
    assert 0.0 <= parties["unseen_accuracy"] <= 1.0
    assert set(parties["party_val_accuracy"]) == {"0", "1", "2"}
    assert summary["overfit_gap"] == pytest.approx(parties["train_accuracy"] - summary["final_test_accuracy"])


def test_time_to_target_leaves_out_local_only_whose_validation_is_each_partys_own_split(tmp_path) -> None:
    # a party's own model on its own (label-skewed) split scores high without learning the task: reaching the
    # centralized target that way is no cost to report
    from ffm.study.report import to_target

    def row(mode: str, vals: list[float]) -> dict:
        run_dir = tmp_path / mode
        run_dir.mkdir()
        run_dir.joinpath("metrics.jsonl").write_text("".join(
            json.dumps({"round": r, "val": {"val_accuracy": v}, "bytes_up": 1e6, "wall_time_s": 1.0}) + "\n"
            for r, v in enumerate(vals, start=1)))
        return {"condition": "", "mode": mode, "grid": "", "seed": 0, "status": "done", "val": max(vals),
                "higher_is_better": 1, "metric": "accuracy", "run_dir": str(run_dir)}

    table = to_target([row("centralized", [0.5, 0.8]), row("federated", [0.3, 0.79]), row("local", [0.9, 0.9])])

    assert "| federated | 0.95 | 1/1 | 2.0 |" in table and "| centralized | 0.95 | 1/1 | 2.0 |" in table
    assert "| local |" not in table and "Local-only is not in this table" in table
