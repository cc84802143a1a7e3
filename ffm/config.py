"""One typed job config tree: the dataclasses are the source of truth for keys, defaults and help.

YAML files, ``key=value`` overrides on the command line and Flower's flat ``run_config`` all go through
the same functions here (:func:`job_from_dict` and :func:`apply_overrides`), so a key means the same
thing wherever it is given.

Three sections are *variants*: ``task``, ``method`` and ``strategy``. Their ``name`` picks a dataclass that
the task / method / strategy registers beside its code (peft-style: LoRA's keys exist only under LoRA), so a
key of another variant is a one-line error and ``ffm config`` lists each variant's own keys.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ffm.errors import ConfigError

__all__ = [
    "CheckpointConfig",
    "ClientConfig",
    "DataConfig",
    "FederationConfig",
    "JobConfig",
    "MethodConfig",
    "ModelConfig",
    "StrategyConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "declared_run_config_tree",
    "describe_keys",
    "job_from_dict",
    "job_from_run_config",
    "job_to_dict",
    "job_to_run_config",
    "job_to_run_config_tree",
    "load_job",
]

TRAINING_MODES = ("federated", "centralized", "local")  # what ffm compare compares
MODES = (*TRAINING_MODES, "prompt_search")
RUNTIMES = ("local", "flower")
SCHEDULERS = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd")
PROMPT_TASKS = {"verbalizer_classification": "{text}", "image_text_contrastive": "{}"}  # and where the input goes
DP_SGD_METHODS = ("lora", "bitfit")  # methods whose trainable layers Opacus differentiates per example (tested)
ATTACKS = ("sign_flip", "scale", "gaussian", "label_flip")
CODECS = ("fp16", "bf16", "int8", "int4", "topk")  # update encodings of ffm.compression


def _f(default: Any, help: str) -> Any:  # `help` mirrors peft's field(metadata={"help": ...})
    return field(default=default, metadata={"help": help})


def _items(help: str) -> Any:
    """A list-valued key (empty by default)."""
    return field(default_factory=list, metadata={"help": help})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class ModelConfig:
    name: str = _f(
        "minilm", "backbone: 'minilm' (the bundled pretrained MiniLM encoder), 'smollm2' (SmolLM2-135M-Instruct, "
        "a decoder), a local directory, or a Hub id; with from_scratch, where the tokenizer comes from"
    )
    max_length: int = _f(64, "tokens per example (longer texts are truncated; language models: the context)")
    from_scratch: bool = _f(False, "build a randomly initialized model of `architecture` instead of loading weights")
    architecture: str = _f("gpt2", "from_scratch: a transformers model type (gpt2, llama, bert, ...)")
    layers: int = _f(2, "from_scratch: transformer layers")
    hidden_size: int = _f(64, "from_scratch: width (the feed-forward layer is 4x)")
    heads: int = _f(2, "from_scratch: attention heads (must divide hidden_size)")


@dataclass
class TaskConfig:
    """Base of every task's config; a task registers a subclass with its own keys (``ffm.tasks``)."""

    name: str = _f("text_classification", "objective and metric; registered")


@dataclass
class MethodConfig:
    """Base of every method's config; a method registers a subclass with its own keys (``ffm.methods``)."""

    name: str = _f("lora", "what is trained and sent; registered")
    personal: list[str] = field(
        default_factory=list,
        metadata={"help": "trainable parameters whose name contains one of these stay on their client and never "
                  "travel (e.g. classifier: a personal head, FedPer-style)"},
    )


@dataclass
class StrategyConfig:
    """Base of every strategy's config; a strategy registers a subclass with its own keys (``ffm.strategies``)."""

    name: str = _f("fedavg", "server aggregation rule; registered")


# Where each variant section's registry lives; imported only when a config is built (they import torch/flwr).
_VARIANT_REGISTRIES = {
    TaskConfig: "ffm.tasks:TASKS",
    MethodConfig: "ffm.methods:METHODS",
    StrategyConfig: "ffm.strategies:STRATEGIES",
}


def _registry(base: type) -> Any:
    module, _, attr = _VARIANT_REGISTRIES[base].partition(":")
    return getattr(importlib.import_module(module), attr)


def _variant_default(base: type) -> Any:
    return _registry(base)[base.name].config()


@dataclass
class DataConfig:
    source: str = _f(
        "bbc_news",
        "data set: bbc_news | ag_news | tinyshakespeare (text by role) | mnist | digits (images) | folder | "
        "image_folder | csv | jsonl | parquet (the last five read 'path')",
    )
    path: str = _f("", "file or folder for source folder/csv/jsonl/parquet")
    text_column: str = _f("text", "column that holds the text (csv/jsonl/parquet)")
    label_column: str = _f("label", "column that holds the label (csv/jsonl/parquet)")
    max_examples: int = _f(0, "use a stratified subset of this many examples (0 = all)")
    test_fraction: float = _f(0.2, "share of examples held out as the global test set (stratified)")
    val_fraction: float = _f(0.1, "share of each client's examples held out as its local validation split")
    unseen_fraction: float = _f(
        0.0, "parties that never train, as a share of federation.num_clients (0.2 with 10 clients adds 2): "
        "partitioned like the others, they measure generalization to unseen parties (train.eval_parties)"
    )
    partitioner: str = _f(
        "dirichlet", "how training data splits across clients: dirichlet (on the label) | iid | shards | natural (by "
        "partition_column) | clusters (Dirichlet over k-means clusters of MiniLM embeddings: skew without labels) | "
        "quantity (IID labels, power-law sizes)"
    )
    quantity_exponent: float = _f(1.0, "partitioner=quantity: client k holds a share proportional to (k + 1)^-exponent")
    clusters: int = _f(8, "partitioner=clusters: k of k-means over the texts' sentence embeddings")
    partition_column: str = _f(
        "label", "partitioner=natural: the column whose values are the parties (role for tinyshakespeare); the "
        "num_clients largest parties take part"
    )
    alpha: float = _f(0.5, "Dirichlet concentration on the label (smaller = more skewed clients)")
    shards_per_client: int = _f(2, "label-sorted shards per client (partitioner=shards)")
    test_path: str = _f(
        "", "deployment: the server's test folder from `ffm deploy split` (then it opens no client's data)"
    )


@dataclass
class TrainConfig:
    optimizer: str = _f("adamw", "local optimizer: adamw | sgd (SCAFFOLD and FedNova assume plain SGD steps)")
    lr: float = _f(1e-3, "learning rate of the local optimizer (its peak, under a scheduler)")
    momentum: float = _f(0.0, "SGD momentum (train.optimizer=sgd)")
    weight_decay: float = _f(0.0, "weight decay of the local optimizer")
    batch_size: int = _f(16, "local batch size")
    local_epochs: int = _f(1, "passes over the local data per round (used when local_steps is 0)")
    local_steps: int = _f(0, "optimizer steps per round per client (0 = use local_epochs)")
    eval_batch_size: int = _f(64, "batch size for evaluation")
    eval_parties: bool = _f(
        False, "at the end, evaluate the final model(s) on every party's validation split, on a sample of the "
        "training data (the overfitting gap) and on the unseen parties; into summary.json (ffm compare sets it)"
    )
    eval_train_examples: int = _f(512, "eval_parties: training examples sampled for the train metric (0 = all)")
    scheduler: str = _f(
        "constant", "learning-rate schedule over the whole run (every round continues it): constant | linear | cosine"
    )
    warmup_ratio: float = _f(0.0, "share of the run's steps spent warming the learning rate up from 0, in [0, 1)")
    max_grad_norm: float = _f(0.0, "clip each step's gradient to this L2 norm (0 = no clipping)")
    precision: str = _f("fp32", "local training's forward pass: fp32 | bf16 (CPU autocast; fp32 weights and "
                        "gradients; faster where the CPU has bf16 instructions, e.g. avx512_bf16 / AMX)")
    steps_spread: float = _f(
        0.0, "stragglers: each client's steps in a round drawn uniformly from [(1 - spread) S, S], in [0, 1)"
    )


@dataclass
class FederationConfig:
    num_clients: int = _f(10, "number of clients (data owners)")
    rounds: int = _f(5, "federated rounds")
    fraction_train: float = _f(1.0, "share of clients sampled to train each round, in (0, 1]")
    fraction_evaluate: float = _f(1.0, "share of clients that evaluate on their validation split, in [0, 1]")
    min_train_clients: int = _f(
        1, "fewest usable updates a round needs; with fewer it fails: logged, global state unchanged"
    )
    max_failed_rounds: int = _f(3, "consecutive failed rounds after which the run stops with an error")
    workers: int = _f(0, "the LocalGrid's worker processes: a round's clients train in parallel, sharing one copy "
                      "of the frozen base (forked copy-on-write); 1 = one client at a time in this process; "
                      "0 = as many as pay off here (one per core for a model of 5M+ parameters, within free memory)")
    worker_threads: int = _f(0, "torch threads per worker process (0 = the machine's cores / workers)")
    streaming: bool = _f(True, "aggregate mean-based rules (fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad) "
                         "from a running sum as replies arrive: memory does not grow with the clients per round")


@dataclass
class ClientConfig:
    mods: list[str] = field(
        default_factory=list, metadata={"help": "Flower mods around the ClientApp, outermost first; registered"}
    )
    clipping_norm: float = _f(1.0, "L2 bound on each client's update (mod 'fixedclipping')")
    dropout: float = _f(0.0, "probability that a client drops out of a train round, mid-round (mod 'dropout')")
    compression: str = _f("none", "what a client's update travels as: none | fp16 | bf16 | int8 | int4 (stochastic "
                          "rounding) | topk (client.topk_fraction of the entries); decoded by the server")
    topk_fraction: float = _f(0.01, "compression=topk: share of each tensor's entries sent (the largest in magnitude)")
    error_feedback: bool = _f(True, "compression: keep what was not sent in the node state and add it to the next "
                              "update (the sum over rounds stays unbiased)")
    attack: str = _f("sign_flip", "what attackers send (mod 'attack'): sign_flip | scale | gaussian | label_flip")
    attackers: float = _f(0.2, "share of the clients that attack, the lowest partition ids (mod 'attack')")
    attack_scale: float = _f(
        10.0, "attack strength: the update's factor (sign_flip: -scale, scale), or the noise std (gaussian)"
    )


@dataclass
class PrivacyConfig:
    clipping: str = _f("none", "client-level DP (DP-FedAvg): none | fixed | adaptive clipping of each update")
    side: str = _f("server", "where updates are clipped: server (trusted server) | client (a Flower mod on each node)")
    noise_multiplier: float = _f(1.0, "z: Gaussian noise std on the sum of updates = z x clipping norm")
    clipping_norm: float = _f(1.0, "L2 bound on each update (the initial bound for adaptive clipping)")
    target_epsilon: float = _f(0.0, "> 0: choose z before the run so that epsilon after all rounds is this")
    delta: float = _f(1e-5, "delta of the (epsilon, delta) guarantee")
    target_quantile: float = _f(0.5, "adaptive: the share of updates the clipping norm should leave unclipped")
    clip_norm_lr: float = _f(0.2, "adaptive: learning rate of the clipping norm (geometric update)")
    clipped_count_stddev: float = _f(0.0, "adaptive: noise std on the count of clipped updates (0 = clients / 20)")
    secure_aggregation: bool = _f(
        False, "SecAgg+: the server learns only the weighted sum of the updates (fedavg/fedprox; composes with "
        "clipping=fixed side=client, whose noise is then added by the clients before masking)")
    secagg_threshold: float = _f(0.7, "secure_aggregation: share of a client's neighbours whose shares rebuild "
                                 "its secrets (up to 1 - this of them may drop out)")
    secagg_neighbours: int = _f(0, "secure_aggregation: neighbours per client in SecAgg+'s graph (0 = all others)")
    secagg_bound: float = _f(0.5, "secure_aggregation: each coordinate of an update is clipped to +-this")
    secagg_bits: int = _f(20, "secure_aggregation: quantization steps per bound (2^bits), in a 64-bit ring")
    secagg_max_norm: float = _f(0.0, "secure_aggregation: a client refuses to send an update whose L2 norm is "
                                "above this (0 = no check; NaN/inf are always refused)")
    dp_sgd: bool = _f(False, "sample-level DP-SGD in local training (Opacus): per-example clipping and noise")
    sgd_noise_multiplier: float = _f(1.0, "dp_sgd: noise std on each step's summed gradient, in units of sgd_clip")
    sgd_clip: float = _f(1.0, "dp_sgd: L2 bound on each example's gradient")


@dataclass
class SearchConfig:
    templates: list[str] = field(
        default_factory=list,
        metadata={"help": "mode=prompt_search: candidate templates, each with {text} (empty = task.template)"},
    )
    verbalizers: list[str] = field(
        default_factory=list,
        metadata={"help": "mode=prompt_search: candidate label words, one string per candidate with the words "
                  "in label order separated by | (empty = task.verbalizer)"},
    )
    cues: list[str] = field(
        default_factory=lambda: ["Topic:", "Category:", "Section:", "This article is about"],
        metadata={"help": "mode=prompt_search: endings an edit may put after the text of the best template"},
    )
    instructions: list[str] = field(
        default_factory=lambda: ["Classify the news article by topic."],
        metadata={"help": "mode=prompt_search: first lines an edit may put in front of the best template (or "
                  "an edit drops the first line)"},
    )
    edits: int = _f(4, "mode=prompt_search: new candidates made from the best so far in every round after the first")
    init_from: str = _f("", "mode=prompt_search: a run directory whose last checkpoint the frozen model starts "
                        "from (e.g. a federated CLIP run; every node must be able to read it)")
    score: str = _f("accuracy", "mode=prompt_search: what clients score a candidate by: accuracy | loss")
    noise_multiplier: float = _f(
        0.0, "mode=prompt_search: Gaussian noise on the sum of the clients' score vectors, in units of its "
        "sensitivity (client-level DP; score=accuracy only); epsilon is reported")
    delta: float = _f(1e-5, "mode=prompt_search: delta of the reported (epsilon, delta)")


@dataclass
class ContinualConfig:
    kind: str = _f("none", "continual learning: none | class_incremental (classes arrive a few at a time; the "
                   "head grows) | domain_incremental (same labels, new data: continual.sources, or data.source cut "
                   "in order)")
    stages: int = _f(3, "stages of the stream; federation.rounds is split evenly across them (a multiple of this)")
    classes: list[str] = _items("class_incremental: the label names of each stage, | between names (e.g. "
                                "business|tech,sports|politics,entertainment); empty = label order cut into `stages` "
                                "groups")
    sources: list[str] = _items("domain_incremental: one data.source per stage (labels matched by name, see "
                                "label_map); empty = data.source cut into `stages` consecutive parts in its own order")
    label_map: list[str] = _items("domain_incremental: from=to renames of a later source's labels onto the first "
                                  "source's (e.g. World=politics); examples whose label matches none are dropped")
    parties: list[str] = _items("party churn: the partition ids that take part in each stage, as ranges joined by | "
                                "(e.g. 0-5,0-7,3-9); empty = every party in every stage")
    method: str = _f("naive", "naive (fine-tune on, forgets) | replay (a bounded buffer of own past examples in the "
                     "node state) | ewc (Fisher penalty) | adapters (a fresh adapter per stage, routed by stage at "
                     "evaluation) | joint (upper bound: every stage's data from the start)")
    replay_size: int = _f(64, "replay: examples each client keeps of its past stages (reservoir sampling)")
    replay_batch: int = _f(0, "replay: buffered examples added to each local batch (0 = train.batch_size)")
    ewc_lambda: float = _f(100.0, "ewc: weight of the penalty (lambda / 2) * sum F (theta - theta*)^2")
    ewc_samples: int = _f(64, "ewc: examples of the finished stage a client computes its diagonal Fisher on")


CONTINUAL_KINDS = ("none", "class_incremental", "domain_incremental")
CONTINUAL_METHODS = ("naive", "replay", "ewc", "adapters", "joint")
STATEFUL_STRATEGIES = ("fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold")  # server state shaped like the model


@dataclass
class CheckpointConfig:
    keep_last: int = _f(0, "keep only the newest this many round checkpoints (0 = keep every round)")


@dataclass
class JobConfig:
    mode: str = _f("federated", "federated | centralized (all data pooled) | local (each client alone) | "
                   "prompt_search (choose a discrete prompt from clients' private scores; no training)")
    runtime: str = _f("local", "which Grid carries the messages: local (in-process) or flower (`ffm deploy run`)")
    seed: int = _f(0, "seed of every random choice: split, partition, init, sampling, shuffling")
    run_dir: str = _f("", "run directory (empty = runs/<config name>-<time>)")
    resume: bool = _f(False, "continue from the last complete round found in run_dir")
    progress: bool = _f(True, "print a progress bar over rounds")
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=lambda: _variant_default(TaskConfig))
    method: MethodConfig = field(default_factory=lambda: _variant_default(MethodConfig))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    strategy: StrategyConfig = field(default_factory=lambda: _variant_default(StrategyConfig))
    client: ClientConfig = field(default_factory=ClientConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


# Keys that moved: a config written for an older ffm gets told where its key lives now.
_MOVED = {"federation.strategy": "strategy.name"}


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
        (item_kind,) = typing.get_args(kind) or (str,)
        texts = [str(item).strip() for item in items if str(item).strip()]
        return texts if item_kind is str else [_coerce(f"{key}[{i}]", t, item_kind) for i, t in enumerate(texts)]
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


def _build(cls: type, raw: dict[str, Any], prefix: str, lenient: bool) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if dotted in _MOVED:
            raise ConfigError(f"config key '{dotted}' is now '{_MOVED[dotted]}'; rename it in your config")
        if key not in hints:
            raise ConfigError(
                f"unknown config key '{dotted}'; valid keys here: {', '.join(names)} (`ffm config` lists all)"
            )
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a section of keys, got {value!r}")
            builder = _build_variant if kind in _VARIANT_REGISTRIES else _build
            kwargs[key] = builder(kind, value, f"{dotted}.", lenient)
        else:
            kwargs[key] = _coerce(dotted, value, kind)
    return cls(**kwargs)


def _build_variant(base: type, raw: dict[str, Any], prefix: str, lenient: bool) -> Any:
    """A variant section: ``name`` picks the registered dataclass; keys of other variants are refused.

    ``lenient`` drops other variants' keys instead: a Flower run_config carries every declared key
    (the app must declare the union of all variants' keys), not only the chosen variant's.
    """
    registry = _registry(base)
    name = _coerce(f"{prefix}name", raw.get("name", base.name), str)
    cls = registry[name].config
    own = {f.name for f in dataclasses.fields(cls)}
    kept: dict[str, Any] = {}
    for key, value in raw.items():
        if key in own:
            kept[key] = value
            continue
        owners = [other for other, entry in registry.items() if key in _field_names(entry.config)]
        if owners and lenient:
            continue
        if owners:
            raise ConfigError(
                f"{prefix}{key} is a key of {prefix}name={'/'.join(owners)}, not of '{name}'; "
                f"'{name}' takes: {', '.join(sorted(own))}"
            )
        kept[key] = value  # unknown everywhere: _build names it
    return _build(cls, kept, prefix, lenient)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def job_from_dict(raw: dict[str, Any], *, lenient: bool = False) -> JobConfig:
    """Build and validate a job config from nested dicts (unknown keys and bad values raise ConfigError)."""
    job = _build(JobConfig, raw or {}, "", lenient)
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


def _scalars(tree: dict[str, Any]) -> dict[str, Any]:
    """Lists comma-joined: Flower's run_config holds scalars only."""
    return {
        key: _scalars(value) if isinstance(value, dict)
        else ",".join(map(str, value)) if isinstance(value, list) else value
        for key, value in tree.items()
    }


def job_to_run_config_tree(job: JobConfig) -> dict[str, Any]:
    """The job as nested tables of scalars (a ``flwr run --run-config`` TOML file)."""
    return _scalars(job_to_dict(job))


def job_to_run_config(job: JobConfig) -> dict[str, bool | float | int | str]:
    """Flatten a job into Flower's run_config form: dotted keys, scalar values, lists comma-joined."""
    return _flatten(job_to_run_config_tree(job))


def declared_run_config_tree() -> dict[str, Any]:
    """Every key any job can set, with its default: the defaults, plus every variant's own keys.

    A Flower app must declare each run_config key it accepts; where two variants share a key the first
    registered default is declared (a submitted job always sends the value of its own variant).
    """
    tree = job_to_run_config_tree(JobConfig())
    for section, base in (("task", TaskConfig), ("method", MethodConfig), ("strategy", StrategyConfig)):
        for _, entry in _registry(base).items():
            for key, value in _scalars(dataclasses.asdict(entry.config())).items():
                tree[section].setdefault(key, value)
    return tree


def job_from_run_config(run_config: dict[str, Any]) -> JobConfig:
    """The one map from Flower's ``run_config`` onto the dataclasses (used by ClientApp and ServerApp)."""
    return job_from_dict(_nest(dict(run_config)), lenient=True)


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


def _check_secure_aggregation(job: JobConfig) -> None:
    """SecAgg+ gives the server only a sum: rules that need each update, and server-side DP, cannot use it."""
    dp = job.privacy
    if not dp.secure_aggregation:
        return
    _check(job.mode == "federated", f"privacy.secure_aggregation needs mode=federated (not {job.mode})")
    _check(job.strategy.name in ("fedavg", "fedprox"),
           f"privacy.secure_aggregation: the server sees only the sum of the updates, so strategy.name="
           f"{job.strategy.name} (which needs each update, or its own state) cannot run on it; use fedavg or fedprox")
    _check(dp.clipping == "none" or (dp.clipping == "fixed" and dp.side == "client"),
           "privacy.secure_aggregation with client-level DP needs privacy.clipping=fixed privacy.side=client (the "
           "clients clip and add their share of the noise before masking)")
    _check(getattr(job.method, "aggregation", "naive") != "exact" and not getattr(job.method, "client_ranks", []),
           "privacy.secure_aggregation sums updates: it cannot run method.aggregation=exact or method.client_ranks")
    _check(0.0 < dp.secagg_threshold <= 1.0 and dp.secagg_bound > 0 and 8 <= dp.secagg_bits <= 30,
           "privacy.secagg_threshold must be in (0, 1], secagg_bound > 0 and secagg_bits in [8, 30]")


def _check_continual(job: JobConfig) -> None:
    """A stream needs whole stages of rounds, classes or sources to cut it by, and a training mode."""
    c = job.continual
    _check(c.kind in CONTINUAL_KINDS, f"continual.kind: '{c.kind}' is not one of {', '.join(CONTINUAL_KINDS)}")
    _check(c.method in CONTINUAL_METHODS,
           f"continual.method: '{c.method}' is not one of {', '.join(CONTINUAL_METHODS)}")
    if c.kind == "none":
        return
    _check(job.mode in TRAINING_MODES, f"continual.kind={c.kind} trains: use mode=federated, centralized or local")
    _check(c.stages >= 2, f"continual.stages must be at least 2, got {c.stages}")
    _check(job.federation.rounds % c.stages == 0,
           f"federation.rounds={job.federation.rounds} must be a multiple of continual.stages={c.stages} (each "
           f"stage trains rounds / stages rounds); e.g. federation.rounds="
           f"{c.stages * max(1, job.federation.rounds // c.stages)}")
    _check(not c.classes or len(c.classes) == c.stages,
           f"continual.classes names {len(c.classes)} stages but continual.stages={c.stages}")
    _check(not c.sources or len(c.sources) == c.stages,
           f"continual.sources names {len(c.sources)} stages but continual.stages={c.stages}")
    _check(not c.parties or len(c.parties) == c.stages,
           f"continual.parties names {len(c.parties)} stages but continual.stages={c.stages}")
    _check(c.kind == "class_incremental" or not c.classes, "continual.classes is for kind=class_incremental")
    _check(c.kind == "domain_incremental" or not (c.sources or c.label_map),
           "continual.sources and continual.label_map are for kind=domain_incremental")
    _check(c.kind != "class_incremental" or job.task.name in ("text_classification", "image_classification"),
           f"continual.kind=class_incremental grows a classification head: task.name={job.task.name} has none "
           "(use kind=domain_incremental)")
    _check(c.kind != "class_incremental" or job.strategy.name not in STATEFUL_STRATEGIES or job.mode == "local",
           f"continual.kind=class_incremental: strategy.name={job.strategy.name} keeps server state shaped like the "
           "model, and the head grows at each stage; use fedavg, fedprox, fednova or a robust rule")
    _check(c.replay_size >= 1 and c.replay_batch >= 0 and c.ewc_lambda >= 0 and c.ewc_samples >= 1,
           "continual.replay_size and continual.ewc_samples must be >= 1, replay_batch and ewc_lambda >= 0")
    _check(c.method != "replay" or not job.privacy.dp_sgd,
           "continual.method=replay with privacy.dp_sgd=true: DP-SGD's Poisson batches cannot mix in the buffer")
    _check(c.kind != "class_incremental" or not job.method.personal,
           "continual.kind=class_incremental grows the head on the server: method.personal must be empty")
    _check(not job.resume, "resume=true is not supported for continual jobs yet: start the stream again")
    _check(not job.data.test_path, "continual jobs split their stream themselves: data.test_path (a deployment's "
           "exported split) cannot carry stages; run the SuperNodes without data-path")


def _validate(job: JobConfig) -> None:
    """Reject values out of range, naming the key and what would be valid (variants check their own keys)."""
    from ffm.mods import MODS  # local import: the registries import flwr; config must stay light to import

    _check(job.mode in MODES, f"mode: '{job.mode}' is not one of {', '.join(MODES)}")
    _check(job.runtime in RUNTIMES, f"runtime: '{job.runtime}' is not one of {', '.join(RUNTIMES)}")
    model = job.model
    _check(model.max_length >= 8, "model.max_length must be at least 8")
    _check(model.layers >= 1 and model.heads >= 1, "model.layers and model.heads must be at least 1")
    _check(model.hidden_size % model.heads == 0,
           f"model.hidden_size={model.hidden_size} must be a multiple of model.heads={model.heads}")
    data = job.data
    sources = ("bbc_news", "ag_news", "tinyshakespeare", "mnist", "digits", "folder", "image_folder", "csv", "jsonl",
               "parquet")
    _check(data.source in sources, f"data.source: '{data.source}' is not one of {', '.join(sources)}")
    _check(data.source not in sources[5:] or bool(data.path), f"data.path must be set for data.source={data.source}")
    _check(0.0 < data.test_fraction < 1.0, "data.test_fraction must be in (0, 1)")
    _check(0.0 < data.val_fraction < 1.0, "data.val_fraction must be in (0, 1)")
    _check(0.0 <= data.unseen_fraction <= 1.0, "data.unseen_fraction must be in [0, 1]")
    _check(not job.privacy.dp_sgd or (job.privacy.sgd_noise_multiplier > 0 and job.privacy.sgd_clip > 0),
           "privacy.sgd_noise_multiplier and privacy.sgd_clip must be > 0 with privacy.dp_sgd=true")
    _check(not job.privacy.dp_sgd or job.mode != "prompt_search", "privacy.dp_sgd trains; mode=prompt_search does not")
    _check(not job.privacy.dp_sgd or job.strategy.name not in ("fedprox", "scaffold"),
           f"privacy.dp_sgd=true with strategy.name={job.strategy.name}: DP-SGD's noisy per-example step would drop "
           "its client-side correction; use fedavg, fedavgm, fedadam, fedyogi or another server-side rule")
    _check(not job.privacy.dp_sgd or job.method.name in DP_SGD_METHODS,
           f"privacy.dp_sgd=true supports method.name={' or '.join(DP_SGD_METHODS)}, not {job.method.name}: Opacus "
           "gives no per-sample gradients for peft's IA3 vectors, and wrong-sized ones for embeddings fed broadcast "
           "ids (BERT's positions under full fine-tuning, soft prompts' virtual tokens)")
    _check(not job.privacy.dp_sgd or not getattr(job.method, "client_ranks", []),
           "privacy.dp_sgd=true cannot mask heterogeneous LoRA ranks (method.client_ranks); use one rank")
    _check_secure_aggregation(job)
    _check_continual(job)
    search = job.search
    _check(search.score in ("accuracy", "loss"), f"search.score: '{search.score}' is not accuracy or loss")
    _check(search.edits >= 0 and search.noise_multiplier >= 0, "search.edits and search.noise_multiplier must be >= 0")
    _check(search.noise_multiplier == 0 or search.score == "accuracy",
           "search.noise_multiplier > 0 needs search.score=accuracy (a bounded score; loss has no bound)")
    _check(job.mode != "prompt_search" or job.task.name in PROMPT_TASKS,
           f"mode=prompt_search scores prompts of task.name={' or '.join(PROMPT_TASKS)}, not '{job.task.name}'")
    slot = PROMPT_TASKS.get(job.task.name, "{text}")
    _check(all(slot in t for t in search.templates), f"every template of search.templates must contain {slot}")
    _check(data.max_examples >= 0, "data.max_examples must be 0 (all) or positive")
    partitioners = ("dirichlet", "iid", "shards", "natural", "clusters", "quantity")
    _check(data.partitioner in partitioners, f"data.partitioner: '{data.partitioner}' is not one of {partitioners}")
    _check(data.alpha > 0.0, f"data.alpha must be > 0 (got {data.alpha}); try 0.5 for skewed or 100 for near-IID")
    _check(data.shards_per_client >= 1, "data.shards_per_client must be at least 1")
    _check(data.clusters >= 2, "data.clusters must be at least 2")
    _check(data.quantity_exponent >= 0.0, f"data.quantity_exponent must be >= 0, got {data.quantity_exponent}")
    train = job.train
    _check(train.lr > 0.0, "train.lr must be > 0")
    _check(train.batch_size >= 1 and train.eval_batch_size >= 1, "train.batch_size/eval_batch_size must be >= 1")
    _check(train.local_epochs >= 1 or train.local_steps >= 1, "set train.local_epochs or train.local_steps >= 1")
    _check(train.local_steps >= 0, "train.local_steps must be >= 0")
    _check(train.scheduler in SCHEDULERS, f"train.scheduler: '{train.scheduler}' is not one of {', '.join(SCHEDULERS)}")
    _check(0.0 <= train.warmup_ratio < 1.0, f"train.warmup_ratio must be in [0, 1), got {train.warmup_ratio}")
    _check(train.max_grad_norm >= 0.0, "train.max_grad_norm must be >= 0 (0 = no clipping)")
    _check(train.precision in ("fp32", "bf16"), f"train.precision: '{train.precision}' is not fp32 or bf16")
    _check(train.precision == "fp32" or not job.privacy.dp_sgd,
           "train.precision=bf16 with privacy.dp_sgd=true: Opacus's per-example gradients need fp32; use fp32")
    _check(train.optimizer in OPTIMIZERS, f"train.optimizer: '{train.optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    _check(0.0 <= train.momentum < 1.0, f"train.momentum must be in [0, 1), got {train.momentum}")
    _check(0.0 <= train.steps_spread < 1.0, f"train.steps_spread must be in [0, 1), got {train.steps_spread}")
    fed = job.federation
    _check(fed.num_clients >= 1, "federation.num_clients must be at least 1")
    _check(fed.rounds >= 1, "federation.rounds must be at least 1")
    _check(0.0 < fed.fraction_train <= 1.0, f"federation.fraction_train must be in (0, 1], got {fed.fraction_train}")
    _check(0.0 <= fed.fraction_evaluate <= 1.0, "federation.fraction_evaluate must be in [0, 1]")
    _check(fed.min_train_clients >= 1, "federation.min_train_clients must be at least 1")
    _check(fed.workers >= 0 and fed.worker_threads >= 0, "federation.workers must be >= 0 (0 = as many as pay off) "
           "and federation.worker_threads >= 0 (0 = cores / workers)")
    lora_rule = getattr(job.method, "aggregation", "naive") == "exact" or getattr(job.method, "client_ranks", [])
    _check(not lora_rule or job.strategy.name in ("fedavg", "fedprox"),
           f"method.aggregation=exact and method.client_ranks work on the mean of the adapters: use strategy.name="
           f"fedavg or fedprox, not '{job.strategy.name}'")
    _check(fed.max_failed_rounds >= 1, "federation.max_failed_rounds must be at least 1")
    for mod in job.client.mods:
        _check(mod in MODS, f"client.mods: '{mod}' is not one of {', '.join(MODS.names())}")
    _check(job.client.clipping_norm > 0.0, "client.clipping_norm must be > 0")
    _check(job.client.compression in ("none", *CODECS),
           f"client.compression: '{job.client.compression}' is not one of none, {', '.join(CODECS)}")
    _check(0.0 < job.client.topk_fraction <= 1.0, f"client.topk_fraction must be in (0, 1], got "
           f"{job.client.topk_fraction}")
    _check(job.client.compression == "none" or not job.privacy.secure_aggregation,
           f"client.compression={job.client.compression} cannot run with privacy.secure_aggregation: SecAgg+ sums "
           "updates in its own quantized ring encoding (privacy.secagg_bits), which is its compression")
    _check(0.0 <= job.client.dropout < 1.0, f"client.dropout must be in [0, 1), got {job.client.dropout}")
    _check(job.client.attack in ATTACKS, f"client.attack: '{job.client.attack}' is not one of {', '.join(ATTACKS)}")
    _check(0.0 <= job.client.attackers <= 1.0, f"client.attackers must be in [0, 1], got {job.client.attackers}")
    dp = job.privacy
    _check(dp.clipping in ("none", "fixed", "adaptive"), f"privacy.clipping: '{dp.clipping}' is not none, fixed or "
           "adaptive")
    _check(dp.side in ("server", "client"), f"privacy.side: '{dp.side}' is not server or client")
    _check(dp.noise_multiplier >= 0.0 and dp.clipping_norm > 0.0, "privacy.noise_multiplier must be >= 0 and "
           "privacy.clipping_norm > 0")
    _check(0.0 < dp.delta < 1.0, f"privacy.delta must be in (0, 1), got {dp.delta}")
    _check(dp.target_epsilon >= 0.0, "privacy.target_epsilon must be >= 0 (0 = use privacy.noise_multiplier)")
    _check(dp.target_epsilon == 0.0 or dp.clipping == "fixed", "privacy.target_epsilon calibrates fixed clipping "
           "only: set privacy.clipping=fixed, or give privacy.noise_multiplier for adaptive clipping")
    _check(dp.clipping == "none" or job.strategy.name in ("fedavg", "fedprox"), "privacy.clipping (DP-FedAvg) "
           f"needs a mean of the updates: use strategy.name=fedavg or fedprox, not '{job.strategy.name}'")
    _check(job.checkpoint.keep_last >= 0, "checkpoint.keep_last must be 0 (keep all) or positive")


def _describe(cls: type, prefix: str, rows: list[tuple[str, str, str, str]]) -> None:
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            if kind in _VARIANT_REGISTRIES:
                _describe_variant(kind, f"{prefix}{f.name}.", rows)
            else:
                _describe(kind, f"{prefix}{f.name}.", rows)
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        type_name = f"list[{typing.get_args(kind)[0].__name__}]" if typing.get_origin(kind) is list else kind.__name__
        rows.append((f"{prefix}{f.name}", type_name, repr(default), f.metadata.get("help", "")))


def _describe_variant(base: type, prefix: str, rows: list[tuple[str, str, str, str]]) -> None:
    """The base keys, then each variant's own keys tagged ``[variant]`` (one row for variants that agree)."""
    registry = _registry(base)
    shared = _field_names(base)
    start = len(rows)
    _describe(base, prefix, rows)
    key, kind, default, text = rows[start]  # `name` is the first field of every variant base
    rows[start] = (key, kind, default, f"{text}: {', '.join(registry.names())}")
    owners: dict[tuple[str, str, str, str], list[str]] = {}
    for name, entry in registry.items():
        own: list[tuple[str, str, str, str]] = []
        _describe(entry.config, prefix, own)
        for row in own:
            if row[0][len(prefix) :] not in shared:
                owners.setdefault(row, []).append(name)
    rows.extend((k, t, d, f"[{', '.join(names)}] {h}") for (k, t, d, h), names in owners.items())


def describe_keys() -> list[tuple[str, str, str, str]]:
    """Every config key as (dotted key, type, default, help), for `ffm config`; variant keys name their variant."""
    from ffm.mods import MODS

    rows: list[tuple[str, str, str, str]] = []
    _describe(JobConfig, "", rows)
    return [(k, t, d, f"{h}: {', '.join(MODS.names())}" if k == "client.mods" else h) for k, t, d, h in rows]
