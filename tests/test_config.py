"""Config specification: YAML + dotted overrides, type coercion, clear errors, the Flower run_config map."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ffm.config import (
    JobConfig,
    apply_overrides,
    declared_run_config_tree,
    describe_keys,
    job_from_dict,
    job_from_run_config,
    job_to_run_config,
    load_job,
)
from ffm.errors import ConfigError
from ffm.methods import METHODS
from ffm.settings import flatten as _flatten
from ffm.strategies import STRATEGIES
from ffm.tasks import TASKS


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_yaml_file_sets_keys_and_leaves_the_rest_at_their_defaults(tmp_path):
    path = _yaml(tmp_path, "mode: centralized\ntrain:\n  lr: 0.005\nfederation:\n  num_clients: 4\n")

    job = load_job(path)

    assert job.mode == "centralized"
    assert job.train.lr == 0.005
    assert job.federation.num_clients == 4
    assert job.train.batch_size == JobConfig().train.batch_size
    assert job.data == JobConfig().data


def test_overrides_win_over_the_yaml_file(tmp_path):
    path = _yaml(tmp_path, "train:\n  lr: 0.005\nfederation:\n  rounds: 7\n")

    job = load_job(path, ["train.lr=5e-4"])

    assert job.train.lr == 5e-4
    assert job.federation.rounds == 7


@pytest.mark.parametrize(
    ("override", "get", "expected"),
    [
        ("federation.rounds=3", lambda j: j.federation.rounds, 3),
        ("train.lr=5e-4", lambda j: j.train.lr, 5e-4),
        ("data.alpha=2", lambda j: j.data.alpha, 2.0),
        ("progress=false", lambda j: j.progress, False),
        ("method.train_head=False", lambda j: j.method.train_head, False),
        ("resume=yes", lambda j: j.resume, True),
        ("method.targets=query,key,value", lambda j: j.method.targets, ["query", "key", "value"]),
        ("method.targets=[query, dense]", lambda j: j.method.targets, ["query", "dense"]),
        ("data.path=/tmp/x.csv", lambda j: j.data.path, "/tmp/x.csv"),
    ],
)
def test_override_value_is_coerced_to_the_type_of_its_key(override, get, expected):
    job = load_job(None, [override])

    value = get(job)

    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("override", "expected"),
    [("data.label_column=no", "no"), ("data.text_column=007", "007"), ("model.name=on", "on")],
)
def test_string_override_is_kept_as_written_even_when_yaml_would_read_it_as_another_type(override, expected):
    key = override.partition("=")[0]

    job = load_job(None, [override])

    section, _, leaf = key.partition(".")
    assert getattr(getattr(job, section), leaf) == expected


@pytest.mark.parametrize("override", ["train.lrr=0.1", "federation.num_client=3", "colour=blue"])
def test_unknown_key_is_a_config_error_naming_the_dotted_key(override):
    key = override.partition("=")[0]

    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        load_job(None, [override])


def test_unknown_key_in_the_yaml_file_is_a_config_error_naming_the_dotted_key(tmp_path):
    path = _yaml(tmp_path, "train:\n  learning_rate: 0.1\n")

    with pytest.raises(ConfigError, match=re.escape("'train.learning_rate'")):
        load_job(path)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=abc", "train.lr"),
        ("federation.rounds=2.5", "federation.rounds"),
        ("federation.rounds=three", "federation.rounds"),
        ("progress=maybe", "progress"),
        ("seed=", "seed"),
    ],
)
def test_value_of_the_wrong_type_is_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}:"):
        load_job(None, [override])


def test_override_inside_a_key_that_is_not_a_section_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=re.escape("'seed.x'")):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_list_override_that_is_broken_yaml_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=re.escape("method.targets")):
        load_job(None, ["method.targets=[query, value"])


def test_override_without_equals_sign_is_a_config_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_job(None, ["federation.rounds"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.alpha=0", "data.alpha"),
        ("data.alpha=-1", "data.alpha"),
        ("federation.fraction_train=0", "federation.fraction_train"),
        ("federation.fraction_train=1.5", "federation.fraction_train"),
        ("federation.fraction_evaluate=1.1", "federation.fraction_evaluate"),
        ("strategy.name=fedfoo", "strategy.name"),
        ("strategy.name=fedtrimmedavg strategy.beta=0.5", "strategy.beta"),
        ("train.scheduler=exponential", "train.scheduler"),
        ("train.warmup_ratio=1", "train.warmup_ratio"),
        ("client.mods=noise", "client.mods"),
        ("mode=decentralized", "mode"),
        ("data.partitioner=random", "data.partitioner"),
        ("data.test_fraction=1", "data.test_fraction"),
        ("federation.num_clients=0", "federation.num_clients"),
        ("data.source=csv", "data.path"),
    ],
)
def test_value_out_of_range_is_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_job(None, override.split())


@pytest.mark.parametrize("fraction", [1.0, 0.3])
def test_fraction_train_accepts_values_in_the_half_open_unit_interval(fraction):
    assert load_job(None, [f"federation.fraction_train={fraction}"]).federation.fraction_train == fraction


def test_unknown_strategy_error_lists_the_registered_strategies():
    with pytest.raises(ConfigError, match="fedavg"):
        load_job(None, ["strategy.name=fedfoo"])


def test_unknown_method_error_names_the_key_and_lists_the_registered_methods():
    with pytest.raises(ConfigError,
                       match=r"method\.name: 'prefix' is not one of bitfit, fedkseed, full, ia3, lora, offsite, "):
        load_job(None, ["method.name=prefix"])


def test_missing_config_file_is_a_config_error_naming_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match=re.escape("nope.yaml")):
        load_job(missing)


def test_yaml_that_is_not_a_mapping_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_job(_yaml(tmp_path, "- a\n- b\n"))


def test_run_config_round_trip_gives_back_the_same_job():
    job = load_job(
        None,
        [
            "mode=local",
            "seed=7",
            "run_dir=runs/x",
            "progress=false",
            "model.name=/models/tiny",
            "method.targets=query,key,value",
            "method.train_head=false",
            "method.dropout=0.2",
            "data.source=csv",
            "data.path=/data/x.csv",
            "data.alpha=0.1",
            "train.lr=3e-4",
            "strategy.name=fedtrimmedavg",
            "strategy.beta=0.1",
            "federation.fraction_train=0.5",
        ],
    )

    run_config = job_to_run_config(job)

    assert all(isinstance(v, bool | int | float | str) for v in run_config.values())
    assert run_config["method.targets"] == "query,key,value"
    assert job_from_run_config(run_config) == job


def test_run_config_round_trip_of_the_default_job():
    assert job_from_run_config(job_to_run_config(JobConfig())) == JobConfig()


def test_every_described_key_is_declared_for_flower_and_every_declared_key_is_described():
    described = {key for key, *_ in describe_keys()}

    assert set(_flatten(declared_run_config_tree())) == described


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += _leaf_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_describe_keys_lists_every_key_of_the_default_job_with_type_default_and_help():
    rows = describe_keys()

    described = [key for key, *_ in rows]
    assert all(key in described for key in _leaf_keys(JobConfig))
    defaults = job_to_run_config(JobConfig())
    for key, kind, default, help_text in rows:
        assert kind in ("str", "int", "float", "bool", "list[str]", "list[int]", "list[float]"), key
        assert help_text.strip(), f"{key} has no help text"
        if key in defaults and not help_text.startswith("["):
            value = defaults[key]
            item = {"list[str]": str, "list[int]": int, "list[float]": float}.get(kind)
            assert default == repr([item(v) for v in value.split(",") if v] if item else value), key


@pytest.mark.parametrize(("section", "registry"), [("method", METHODS), ("strategy", STRATEGIES), ("task", TASKS)])
def test_describe_keys_lists_each_variants_own_keys_under_its_name(section, registry):
    rows = {(key, name) for key, _, _, help_text in describe_keys() if help_text.startswith("[")
            for name in help_text[1:].partition("]")[0].split(", ")}

    for name, entry in registry.items():
        base = {f.name for f in dataclasses.fields(type(getattr(JobConfig(), section)).__mro__[-2])}
        for f in dataclasses.fields(entry.config):
            if f.name not in base:
                assert (f"{section}.{f.name}", name) in rows


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.name=full", "method.r=4"], "method.r is a key of method.name=lora, not of 'full'"),
        (["strategy.name=fedavg", "strategy.proximal_mu=0.1"],
         "strategy.proximal_mu is a key of strategy.name=fedprox"),
        (["strategy.name=fedprox", "strategy.eta=0.1"],
         "strategy.eta is a key of strategy.name=fedadagrad/fedadam/fedyogi"),
    ],
)
def test_a_key_of_another_variant_is_a_one_line_error_naming_its_owner(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_job(None, overrides)

    assert "\n" not in str(caught.value)


def test_each_variant_takes_its_own_keys():
    job = load_job(None, ["strategy.name=fedadam", "strategy.eta=0.05", "method.name=lora", "method.r=4"])

    assert (job.strategy.name, job.strategy.eta, job.method.r) == ("fedadam", 0.05, 4)


def test_a_flower_run_config_with_every_declared_key_gives_back_the_submitted_job():
    job = load_job(None, ["strategy.name=fedprox", "strategy.proximal_mu=0.3", "method.name=full"])
    declared = _flatten(declared_run_config_tree())  # what a SuperLink adds for keys the job did not send

    assert job_from_run_config(declared | job_to_run_config(job)) == job


def test_an_old_config_key_names_its_new_place():
    with pytest.raises(ConfigError, match=re.escape("'federation.strategy' is now 'strategy.name'")):
        load_job(None, ["federation.strategy=fedavg"])


def test_describe_keys_reports_the_type_of_each_key():
    rows = {key: kind for key, kind, *_ in describe_keys()}

    assert rows["train.lr"] == "float"
    assert rows["federation.rounds"] == "int"
    assert rows["progress"] == "bool"
    assert rows["method.targets"] == "list[str]"
    assert rows["data.path"] == "str"


def test_every_default_is_valid():
    assert job_from_dict({}) == JobConfig()
