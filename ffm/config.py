"""The job: one typed config tree, built from the core sections, the seams' variants and every registered section.

YAML files, ``key=value`` overrides on the command line and Flower's flat ``run_config`` all go through the
functions here (:func:`job_from_dict`, :func:`apply_overrides`), so a key means the same thing wherever it is
given. This module knows no plug-in by name: the ``task``, ``method`` and ``strategy`` sections are variants
chosen from their seams' registries, every other plug-in section comes from :data:`ffm.settings.SECTIONS`, and
the rules that span sections are :data:`ffm.settings.CHECKS`, which read capabilities. The built-in plug-ins
register themselves when :mod:`ffm.plugins` is imported (below).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import ffm.plugins  # noqa: F401 - registers the built-in plug-ins' sections, checks and entries
from ffm.budget import BudgetConfig
from ffm.data.config import DataConfig
from ffm.errors import ConfigError
from ffm.federation import FederationConfig
from ffm.local_training import TrainConfig
from ffm.methods import METHODS, MethodConfig, build_method
from ffm.models.config import ModelConfig
from ffm.modes import Mode, Runtime
from ffm.run_dir import CheckpointConfig, RunDirectory
from ffm.settings import (
    CHECKS,
    MOVED,
    SECTIONS,
    Job,
    Plain,
    SectionKind,
    Variant,
    build,
    describe,
    flatten,
    nest,
    option,
    require,
    scalars,
    to_dict,
)
from ffm.strategies import STRATEGIES, StrategyConfig, strategy_spec
from ffm.tasks import TASKS, TaskConfig

__all__ = [  # noqa: F822 - JobConfig is built on first use (module __getattr__), from the registries
    "JobConfig",
    "RunKeys",
    "apply_overrides",
    "declared_run_config_tree",
    "describe_keys",
    "job_class",
    "job_from_dict",
    "job_from_run_config",
    "job_to_resume",
    "job_to_dict",
    "job_to_run_config",
    "job_to_run_config_tree",
    "load_job",
]

MOVED["runtime=local"] = "runtime=simulation"  # `local` is a mode; the in-process Grid is the simulation runtime
MOVED["federation.strategy"] = "strategy.name"
MOVED["search.init_from"] = "model.init_from"  # every mode starts from another run's state, not only a search


@dataclass
class RunKeys:
    """The job's top-level keys: what it does with the data, what carries it, and where it writes."""

    mode: Mode = option(Mode.FEDERATED, "federated | centralized (all data pooled) | local (each client alone) | "
                        "prompt_search (choose a discrete prompt from clients' private scores; no training)")
    runtime: Runtime = option(Runtime.SIMULATION, "which Grid carries the messages: simulation (ffm's in-process "
                              "LocalGrid) or flower (a SuperLink and SuperNodes: `ffm deploy run`)")
    seed: int = option(0, "seed of every random choice: split, partition, init, sampling, shuffling")
    run_dir: str = option("", "run directory (empty = runs/<config name>-<mode>-<time>)")
    resume: bool = option(False, "continue from the last complete round found in run_dir")
    progress: bool = option(True, "print a progress bar over rounds")


def _sections() -> dict[str, SectionKind]:
    """Every section, in the order `ffm config` lists them: the core and the seams, then the registered ones."""
    core = {
        "model": Plain(ModelConfig),
        "task": Variant(TaskConfig, TASKS),
        "method": Variant(MethodConfig, METHODS),
        "data": Plain(DataConfig),
        "train": Plain(TrainConfig),
        "federation": Plain(FederationConfig),
        "strategy": Variant(StrategyConfig, STRATEGIES),
        "budget": Plain(BudgetConfig),
    }
    ordered = sorted(enumerate(SECTIONS.items()), key=lambda item: (item[1][1].position, item[0]))
    return {**core, **{name: spec.kind for _, (name, spec) in ordered}, "checkpoint": Plain(CheckpointConfig)}


@functools.cache
def _job_class(_registered: tuple[tuple[str, int], ...]) -> type:
    sections = _sections()
    hints = typing.get_type_hints(RunKeys)
    fields: list[tuple[str, Any, Any]] = [(f.name, hints[f.name], f) for f in dataclasses.fields(RunKeys)]
    for name, kind in sections.items():
        fields.append((name, kind.base, dataclasses.field(default_factory=kind.default)))
    cls = dataclasses.make_dataclass("JobConfig", fields, bases=(Job,))
    cls.__doc__ = "A whole job: the top-level keys and one attribute per section (see ``ffm config``)."
    cls.__module__ = __name__
    cls.sections = sections  # type: ignore[attr-defined]
    return cls


def _registered() -> tuple[tuple[str, int], ...]:
    """What the job class depends on: the registered sections and how many entries each composite has."""
    kinds = [("sections", len(SECTIONS)), ("tasks", len(TASKS)), ("methods", len(METHODS)),
             ("strategies", len(STRATEGIES))]
    for name, spec in SECTIONS.items():
        kinds += [(f"{name}:{i}", len(r)) for i, r in enumerate(getattr(spec.kind, "registries", ()))]
    return tuple(kinds)


def job_class() -> type:
    """The job's dataclass for the plug-ins registered now (rebuilt when one is registered later)."""
    return _job_class(_registered())


def __getattr__(name: str) -> Any:  # `from ffm.config import JobConfig`: the class for today's registries
    if name == "JobConfig":
        return job_class()
    raise AttributeError(name)


def _core_checks(job: Job) -> None:
    """Rules between the seams themselves (plug-in packages register theirs in CHECKS)."""
    method = build_method(job.method)
    task = TASKS[job.task.name]
    if method.task_types is not None:
        fits = [name for name, cls in TASKS.items() if cls.peft_task_type in method.task_types]
        others = [name for name, cls in METHODS.items() if cls.task_types is None]
        require(task.peft_task_type in method.task_types,
                f"method.name={job.method.name} supports task.name={' or '.join(fits)}, not '{job.task.name}'; "
                f"use {', '.join(others)}")
    require(job.data.val_fraction > 0 or (job.federation.fraction_evaluate == 0 and not job.train.eval_parties),
            "data.val_fraction=0 leaves the parties no validation split: set federation.fraction_evaluate=0 and "
            "train.eval_parties=false (or hold out a share)")
    require(not job.budget.patience or (job.federation.fraction_evaluate > 0 and job.mode.trains),
            "budget.patience reads the validation metric of each round: it needs federation.fraction_evaluate > 0")
    require(not job.federation.ema or (job.mode.trains and not job.mode.keeps_party_models),
            f"federation.ema averages the rounds' global model, and mode={job.mode} makes none: set federation.ema=0")
    require(not method.needs_each_update or strategy_spec(job).plain_mean,
            f"method.name={job.method.name} with these keys (method.aggregation=exact or method.client_ranks) "
            f"aggregates from each update around a plain mean: use strategy.name="
            f"{' or '.join(n for n, s in STRATEGIES.items() if s.plain_mean)}, not '{job.strategy.name}'")


def job_from_dict(raw: dict[str, Any], *, lenient: bool = False) -> Job:
    """Build and validate a job config from nested dicts (unknown keys and bad values raise ConfigError)."""
    cls = job_class()
    job = build(cls, raw or {}, "", lenient=lenient, sections=cls.sections)
    _core_checks(job)
    for _, check in CHECKS.items():
        check(job)
    return job


def job_to_dict(job: Job) -> dict[str, Any]:
    """The job as nested plain dicts (what ``config.yaml`` holds)."""
    return to_dict(job)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (e.g. ``train.lr=5e-4``) to a nested raw config."""
    flat = flatten(raw or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. federation.rounds=3)")
        # Kept as text: the key's type converts it, so a string such as 'no' or '007' stays as written.
        flat[key.strip()] = value.strip()
    return nest(flat)


def job_to_run_config_tree(job: Job) -> dict[str, Any]:
    """The job as nested tables of scalars (a ``flwr run --run-config`` TOML file)."""
    return scalars(to_dict(job))


def job_to_run_config(job: Job) -> dict[str, bool | float | int | str]:
    """Flatten a job into Flower's run_config form: dotted keys, scalar values, lists comma-joined."""
    return flatten(job_to_run_config_tree(job))


def declared_run_config_tree() -> dict[str, Any]:
    """Every key any job can set, with its default: the defaults, plus every variant's own keys.

    A Flower app must declare each run_config key it accepts; where two variants share a key the first
    registered default is declared (a submitted job always sends the value of its own variant).
    """
    cls = job_class()
    tree = job_to_run_config_tree(cls())
    for section, kind in cls.sections.items():
        for _, variant in kind.classes()[1:]:
            for key, value in scalars(to_dict(variant())).items():
                tree[section].setdefault(key, value)
    return tree


@functools.lru_cache(maxsize=16)
def _from_run_config(items: tuple[tuple[str, Any], ...]) -> Job:
    return job_from_dict(nest(dict(items)), lenient=True)


RUNTIME_KEY_PREFIX = "ffm-"  # run-config keys of the runtime, not of the job (e.g. the operator's signature)


def job_from_run_config(run_config: dict[str, Any]) -> Job:
    """The one map from Flower's ``run_config`` onto the dataclasses (used by ClientApp, mods and ServerApp).

    Every message carries the run config, so the built job is cached by its items: treat it as read-only."""
    items = (item for item in run_config.items() if not item[0].startswith(RUNTIME_KEY_PREFIX))
    return _from_run_config(tuple(sorted(items)))


def load_job(path: str | Path | None, overrides: list[str] | None = None) -> Job:
    """Read a YAML job file (or start from defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist; pass a YAML file such as configs/demo.yaml")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of keys, not {type(raw).__name__}")
    return job_from_dict(apply_overrides(raw, overrides or []))


def describe_keys() -> list[tuple[str, str, str, str]]:
    """Every config key as (dotted key, type, default, help), for `ffm config` and docs/config.md; a variant's
    own keys name their variants."""
    cls = job_class()
    return describe(cls, "", cls.sections)


def job_to_resume(run_dir: str | Path, overrides: list[str]) -> Job:
    """The job of an earlier run, from its own config.yaml, to continue after its last complete round (only
    what :data:`ffm.run_dir.RESUMABLE_CHANGES` names may be overridden)."""
    raw = apply_overrides(RunDirectory.read_config(run_dir), overrides)
    raw.update(run_dir=str(run_dir), resume=True)
    return job_from_dict(raw)
