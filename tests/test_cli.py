"""CLI specification: every user error is one ``ffm: error:`` line on stderr and exit code 2, and nothing
already written is lost; ``ffm config`` and ``ffm run --help`` list the config keys."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import make_job

from ffm.cli import _parser, main
from ffm.config import describe_keys, job_to_dict
from ffm.runtime import run_local


@pytest.fixture
def job_yaml(job_factory, tmp_path) -> Path:
    """The small test job (tiny model, 90 articles, 3 clients, no progress bar) as a YAML file, no run_dir."""
    raw = job_to_dict(job_factory())
    del raw["run_dir"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(argv: list[str]) -> int:
    """``ffm.cli.main`` with every Python warning made visible: none may reach the user next to the error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    assert [str(w.message) for w in caught] == []
    return code


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("ffm: error:")
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.lrr=0.1", "train.lrr"),
        ("federation.rounds=2.5", "federation.rounds"),
        ("train.lr=abc", "train.lr"),
        ("data.alpha=0", "data.alpha"),
        ("data.alpha=-0.5", "data.alpha"),
        ("federation.fraction_train=0", "federation.fraction_train"),
        ("federation.fraction_train=1.5", "federation.fraction_train"),
        ("strategy.name=fedfoo", "strategy.name"),
    ],
)
def test_bad_config_value_exits_2_with_one_line_naming_the_key(job_yaml, tmp_path, capsys, override, named):
    code = _cli(["run", str(job_yaml), f"run_dir={tmp_path / 'run'}", override])

    assert code == 2
    assert named in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()  # rejected before anything is written


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["privacy.secure_aggregation=true", "federation.num_clients=1"], "at least 2 clients per round"),
        (["client.mods=secaggplus"], "switched on by privacy.secure_aggregation=true"),
        (["client.mods=dpclipping"], "switched on by privacy.clipping=fixed privacy.side=client"),
        (["continual.kind=domain_incremental", "continual.sources=bbc_news,nosuchsource,ag_news",
          "federation.rounds=3"], "continual.sources names ['nosuchsource']"),
        (["continual.kind=class_incremental", "continual.parties=0-1,0-9,1", "federation.rounds=3"],
         "continual.parties: '0-9' is outside the partition ids 0..2"),
        (["client.clipping_norm=0.5"], "'client.clipping_norm' is now 'client.max_update_norm'"),
        (["continual.method=replay"], "'continual.method' is now 'continual.approach'"),
        (["runtime=local"], "runtime=local is now runtime=simulation"),
    ],
    ids=["secagg-one-client", "secagg-mod", "dp-mod", "unknown-source", "unknown-party", "moved-clipping-norm",
         "moved-continual-method", "moved-runtime-local"],
)
def test_inputs_that_used_to_slip_through_exit_2_with_one_line_before_anything_is_written(
        job_yaml, tmp_path, capsys, overrides, named):
    code = _cli(["run", str(job_yaml), f"run_dir={tmp_path / 'run'}", *overrides])

    assert code == 2
    assert named in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("argv", "named"), [(["run", "JOB", "--audit", "-5"], "--audit must be"),
                                            (["run", "JOB", "--audit-shadows", "-1"], "--audit-shadows must be"),
                                            (["audit", "RUN", "--examples", "0"], "--examples must be at least 1"),
                                            (["audit", "RUN", "--shadows", "-2"], "--shadows must be")])
def test_audit_counts_out_of_range_exit_2_with_one_line(job_yaml, tmp_path, capsys, argv, named):
    argv = [str(job_yaml) if a == "JOB" else str(tmp_path) if a == "RUN" else a for a in argv]

    code = _cli(argv)

    assert code == 2
    assert named in _one_error_line(capsys)


def test_missing_config_file_exits_2_naming_the_file(tmp_path, capsys):
    code = _cli(["run", str(tmp_path / "nope.yaml")])

    assert code == 2
    assert "nope.yaml" in _one_error_line(capsys)


def test_run_without_config_or_resume_exits_2(capsys):
    code = _cli(["run", "federation.rounds=1"])

    assert code == 2
    assert "config file" in _one_error_line(capsys)


def test_missing_data_file_exits_2_naming_the_file(job_yaml, tmp_path, capsys):
    code = _cli(["run", str(job_yaml), f"run_dir={tmp_path / 'run'}", "data.source=csv", "data.path=/nonexistent.csv"])

    assert code == 2
    assert "/nonexistent.csv" in _one_error_line(capsys)


def test_csv_without_the_named_column_exits_2_naming_column_and_file(job_yaml, tmp_path, capsys):
    path = tmp_path / "news.csv"
    pd.DataFrame({"body": ["a", "b", "c", "d"], "topic": ["x", "y", "x", "y"]}).to_csv(path, index=False)

    code = _cli(
        ["run", str(job_yaml), f"run_dir={tmp_path / 'run'}", "data.source=csv", f"data.path={path}",
         "data.label_column=topic"]
    )  # fmt: skip

    assert code == 2
    line = _one_error_line(capsys)
    assert "'text'" in line and "news.csv" in line


def test_more_clients_than_examples_exits_2_naming_num_clients(job_yaml, tmp_path, capsys):
    code = _cli(["run", str(job_yaml), f"run_dir={tmp_path / 'run'}", "federation.num_clients=50"])

    assert code == 2
    assert "federation.num_clients" in _one_error_line(capsys)


def test_partition_failure_exits_2_with_the_error_line_only(job_yaml, tmp_path, capsys):
    code = _cli(
        ["run", str(job_yaml), f"run_dir={tmp_path / 'run'}", "data.max_examples=0", "data.partitioner=dirichlet",
         "data.alpha=0.001", "federation.num_clients=20"]
    )  # fmt: skip

    assert code == 2
    assert "data.alpha" in _one_error_line(capsys)


def test_resume_of_a_folder_that_is_not_a_run_directory_exits_2_naming_it(tmp_path, capsys):
    folder = tmp_path / "not-a-run"
    folder.mkdir()

    code = _cli(["run", "--resume", str(folder)])

    assert code == 2
    assert "not-a-run" in _one_error_line(capsys)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One complete small run (2 rounds), shared: the tests below must leave it as it is."""
    job = make_job(tmp_path_factory.mktemp("finished") / "run", tiny_model_dir)
    run_local(job)
    return Path(job.run_dir)


def _copy_run(source: Path, target: Path) -> Path:
    """A copy of a run directory that is a run directory in its own right (config.yaml names its new place)."""
    shutil.copytree(source, target)
    config = yaml.safe_load((target / "config.yaml").read_text())
    config["run_dir"] = str(target)
    (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def test_resume_with_a_corrupt_last_checkpoint_exits_2_naming_it_and_keeps_the_run(finished_run, tmp_path, capsys):
    run_dir = _copy_run(finished_run, tmp_path / "run")
    (run_dir / "checkpoints" / "round-000002.pt").write_bytes(b"\x00garbage, not a torch checkpoint")
    before = _snapshot(run_dir)

    code = _cli(["run", "--resume", str(run_dir)])

    assert code == 2
    assert "round-000002.pt" in _one_error_line(capsys)
    assert _snapshot(run_dir) == before
    assert {"metrics.jsonl", "checkpoints/round-000001.pt", "checkpoints/round-000002.pt"} <= before.keys()


def test_run_into_a_run_dir_that_holds_a_run_exits_2_and_keeps_the_run(finished_run, job_yaml, capsys):
    before = _snapshot(finished_run)

    code = _cli(["run", str(job_yaml), f"run_dir={finished_run}"])

    assert code == 2
    line = _one_error_line(capsys)
    assert str(finished_run) in line and "--resume" in line
    assert _snapshot(finished_run) == before
    assert {"metrics.jsonl", "summary.json", "checkpoints/round-000002.pt"} <= before.keys()


def test_config_command_lists_every_key_and_exits_0(capsys):
    code = main(["config"])

    out = capsys.readouterr().out
    assert code == 0
    for key, _, _, help_text in describe_keys():
        assert key in out and help_text in out, key


def test_config_command_prints_the_resolved_job_with_overrides(job_yaml, capsys):
    code = main(["config", str(job_yaml), "train.lr=0.25", "method.targets=query,key"])

    printed = yaml.safe_load(capsys.readouterr().out)
    assert code == 0
    assert printed["train"]["lr"] == 0.25
    assert printed["method"]["targets"] == ["query", "key"]
    assert printed["federation"]["num_clients"] == 3


def test_config_command_with_an_unknown_key_exits_2_naming_it(capsys):
    code = _cli(["config", "train.lrr=1"])

    assert code == 2
    assert "train.lrr" in _one_error_line(capsys)


def test_run_help_shows_the_config_key_table(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])

    out = capsys.readouterr().out
    assert info.value.code == 0
    for key, *_ in describe_keys():
        assert key in out, key
    assert "federation.fraction_train" in out and "in (0, 1]" in out


def test_deploy_run_takes_overrides_after_its_options():
    args = _parser().parse_args(["deploy", "run", "cfg.yaml", "--superlink", "1.2.3.4:9091", "federation.rounds=2"])

    assert (args.action, args.config, args.superlink) == ("run", "cfg.yaml", "1.2.3.4:9091")
    assert args.overrides == ["federation.rounds=2"]


def test_deploy_split_takes_overrides_on_either_side_of_its_options():
    args = _parser().parse_args(["deploy", "split", "cfg.yaml", "seed=1", "--out", "parts", "federation.num_clients=4"])

    assert (args.action, args.config, args.out) == ("split", "cfg.yaml", "parts")
    assert args.overrides == ["seed=1", "federation.num_clients=4"]


def test_run_takes_overrides_after_resume_and_verbose():
    args = _parser().parse_args(["run", "cfg.yaml", "--resume", "runs/a", "train.lr=0.1", "-v", "federation.rounds=4"])

    assert (args.config, args.resume, args.verbose) == ("cfg.yaml", "runs/a", True)
    assert args.overrides == ["train.lr=0.1", "federation.rounds=4"]
