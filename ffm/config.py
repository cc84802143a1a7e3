"""One typed job config tree: the dataclasses are the source of truth for keys, defaults and help.

YAML files, ``key=value`` overrides on the command line and Flower's flat ``run_config`` all go through
the same two functions here (:func:`job_from_dict` and :func:`apply_overrides`), so a key means the same
thing wherever it is given.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ffm.errors import ConfigError

__all__ = [
    "DataConfig",
    "FederationConfig",
    "JobConfig",
    "MethodConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "describe_keys",
    "job_from_dict",
    "job_from_run_config",
    "job_to_dict",
    "job_to_run_config",
    "load_job",
]

MODES = ("federated", "centralized", "local")
RUNTIMES = ("local", "flower")


def _f(default: Any, help: str) -> Any:  # `help` mirrors peft's field(metadata={"help": ...})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    name: str = _f("minilm", "backbone: 'minilm' (the bundled pretrained MiniLM), a local directory, or a Hub id")
    max_length: int = _f(64, "tokens kept per example (longer texts are truncated)")


@dataclass
class MethodConfig:
    name: str = _f("lora", "what is trained and sent: 'lora' (adapters + head) or 'full' (every weight)")
    r: int = _f(8, "LoRA rank")
    alpha: int = _f(16, "LoRA scaling alpha")
    dropout: float = _f(0.05, "dropout on the LoRA branch")
    targets: list[str] = field(
        default_factory=lambda: ["query", "value"],
        metadata={"help": "module names that get LoRA adapters (comma-separated)"},
    )
    train_head: bool = _f(True, "train (and send) the classification head with the adapters")


@dataclass
class DataConfig:
    source: str = _f(
        "bbc_news", "data set: bbc_news | ag_news | folder | csv | jsonl | parquet (the last four read 'path')"
    )
    path: str = _f("", "file or folder for source folder/csv/jsonl/parquet")
    text_column: str = _f("text", "column that holds the text (csv/jsonl/parquet)")
    label_column: str = _f("label", "column that holds the label (csv/jsonl/parquet)")
    max_examples: int = _f(0, "use a stratified subset of this many examples (0 = all)")
    test_fraction: float = _f(0.2, "share of examples held out as the global test set (stratified)")
    val_fraction: float = _f(0.1, "share of each client's examples held out as its local validation split")
    partitioner: str = _f("dirichlet", "how training data splits across clients: dirichlet | iid | shards")
    alpha: float = _f(0.5, "Dirichlet concentration on the label (smaller = more skewed clients)")
    shards_per_client: int = _f(2, "label-sorted shards per client (partitioner=shards)")
    test_path: str = _f(
        "", "deployment: the server's test folder from `ffm deploy split` (then it opens no client's data)"
    )


@dataclass
class TrainConfig:
    lr: float = _f(1e-3, "AdamW learning rate of the local optimizer")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    batch_size: int = _f(16, "local batch size")
    local_epochs: int = _f(1, "passes over the local data per round (used when local_steps is 0)")
    local_steps: int = _f(0, "optimizer steps per round per client (0 = use local_epochs)")
    eval_batch_size: int = _f(64, "batch size for evaluation")


@dataclass
class FederationConfig:
    num_clients: int = _f(10, "number of clients (data owners)")
    rounds: int = _f(5, "federated rounds")
    fraction_train: float = _f(1.0, "share of clients sampled to train each round, in (0, 1]")
    fraction_evaluate: float = _f(1.0, "share of clients that evaluate on their validation split, in [0, 1]")
    strategy: str = _f("fedavg", "server aggregation strategy (see `ffm config` for the registered ones)")


@dataclass
class JobConfig:
    mode: str = _f("federated", "federated | centralized (all data pooled) | local (each client alone)")
    runtime: str = _f("local", "which Grid carries the messages: local (in-process) or flower (`ffm deploy run`)")
    seed: int = _f(0, "seed of every random choice: split, partition, init, sampling, shuffling")
    run_dir: str = _f("", "run directory (empty = runs/<config name>-<time>)")
    resume: bool = _f(False, "continue from the last complete round found in run_dir")
    progress: bool = _f(True, "print a progress bar over rounds")
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Turn ``value`` (from YAML, the command line or a Flower run_config) into ``kind``."""
    origin = typing.get_origin(kind)
    if origin is list:
        if isinstance(value, str) and value.strip().startswith("["):
            value = _yaml_value(key, value)  # the YAML form [a, b] of a command-line override
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(f"{key}: expected a list (or a comma-separated string), got {value!r}")
        return [str(item).strip() for item in items if str(item).strip()]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(as_float)
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    return "" if value is None else str(value)


def _yaml_value(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{key}: {text!r} is not a valid YAML list; write a,b or [a, b]") from None


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(
                f"unknown config key '{dotted}'; valid keys here: {', '.join(names)} (`ffm config` lists all)"
            )
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a section of keys, got {value!r}")
            kwargs[key] = _build(kind, value, f"{dotted}.")
        else:
            kwargs[key] = _coerce(dotted, value, kind)
    return cls(**kwargs)


def job_from_dict(raw: dict[str, Any]) -> JobConfig:
    """Build and validate a job config from nested dicts (unknown keys and bad values raise ConfigError)."""
    job = _build(JobConfig, raw or {}, "")
    _validate(job)
    return job


def job_to_dict(job: JobConfig) -> dict[str, Any]:
    return dataclasses.asdict(job)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config key '{dotted}' sets a key inside '{part}', which is not a section")
            node = child
        node[leaf] = value
    return tree


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (e.g. ``train.lr=5e-4``) to a nested raw config."""
    flat = _flatten(raw or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. federation.rounds=3)")
        # Kept as text: the key's type converts it, so a string such as 'no' or '007' stays as written.
        flat[key.strip()] = value.strip()
    return _nest(flat)


def job_to_run_config(job: JobConfig) -> dict[str, bool | float | int | str]:
    """Flatten a job into Flower's run_config form: dotted keys, scalar values, lists comma-joined."""
    flat = _flatten(job_to_dict(job))
    return {key: ",".join(value) if isinstance(value, list) else value for key, value in flat.items()}


def job_from_run_config(run_config: dict[str, Any]) -> JobConfig:
    """The one map from Flower's ``run_config`` onto the dataclasses (used by ClientApp and ServerApp)."""
    return job_from_dict(_nest({key: value for key, value in run_config.items()}))


def load_job(path: str | Path | None, overrides: list[str] | None = None) -> JobConfig:
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


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate(job: JobConfig) -> None:
    """Reject values out of range, naming the key and what would be valid."""
    # local imports: the registries import flwr and peft; config must stay light to import
    from ffm.models.methods import METHODS
    from ffm.strategies import STRATEGIES

    _check(job.mode in MODES, f"mode: '{job.mode}' is not one of {', '.join(MODES)}")
    _check(job.runtime in RUNTIMES, f"runtime: '{job.runtime}' is not one of {', '.join(RUNTIMES)}")
    _check(job.model.max_length >= 8, "model.max_length must be at least 8")
    _check(
        job.method.name in METHODS,
        f"method.name: '{job.method.name}' is not one of {', '.join(sorted(METHODS))}",
    )
    _check(job.method.r >= 1, "method.r (LoRA rank) must be at least 1")
    _check(0.0 <= job.method.dropout < 1.0, "method.dropout must be in [0, 1)")
    _check(job.method.name != "lora" or bool(job.method.targets), "method.targets must name at least one module")
    data = job.data
    sources = ("bbc_news", "ag_news", "folder", "csv", "jsonl", "parquet")
    _check(data.source in sources, f"data.source: '{data.source}' is not one of {', '.join(sources)}")
    _check(data.source not in sources[2:] or bool(data.path), f"data.path must be set for data.source={data.source}")
    _check(0.0 < data.test_fraction < 1.0, "data.test_fraction must be in (0, 1)")
    _check(0.0 < data.val_fraction < 1.0, "data.val_fraction must be in (0, 1)")
    _check(data.max_examples >= 0, "data.max_examples must be 0 (all) or positive")
    partitioners = ("dirichlet", "iid", "shards")
    _check(data.partitioner in partitioners, f"data.partitioner: '{data.partitioner}' is not one of {partitioners}")
    _check(data.alpha > 0.0, f"data.alpha must be > 0 (got {data.alpha}); try 0.5 for skewed or 100 for near-IID")
    _check(data.shards_per_client >= 1, "data.shards_per_client must be at least 1")
    train = job.train
    _check(train.lr > 0.0, "train.lr must be > 0")
    _check(train.batch_size >= 1 and train.eval_batch_size >= 1, "train.batch_size/eval_batch_size must be >= 1")
    _check(train.local_epochs >= 1 or train.local_steps >= 1, "set train.local_epochs or train.local_steps >= 1")
    _check(train.local_steps >= 0, "train.local_steps must be >= 0")
    fed = job.federation
    _check(fed.num_clients >= 1, "federation.num_clients must be at least 1")
    _check(fed.rounds >= 1, "federation.rounds must be at least 1")
    _check(0.0 < fed.fraction_train <= 1.0, f"federation.fraction_train must be in (0, 1], got {fed.fraction_train}")
    _check(0.0 <= fed.fraction_evaluate <= 1.0, "federation.fraction_evaluate must be in [0, 1]")
    _check(
        fed.strategy in STRATEGIES,
        f"federation.strategy: '{fed.strategy}' is not registered; choose one of {', '.join(sorted(STRATEGIES))}",
    )


def describe_keys() -> list[tuple[str, str, str, str]]:
    """Every config key as (dotted key, type, default, help), for `ffm config`."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{f.name}.")
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            type_name = "list[str]" if typing.get_origin(kind) is list else kind.__name__
            rows.append((f"{prefix}{f.name}", type_name, repr(default), f.metadata.get("help", "")))

    walk(JobConfig, "")
    return rows
