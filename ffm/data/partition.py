"""Split a labelled data set into a global test set and per-client (train, validation) partitions.

The partitioners are flwr-datasets' own (Dirichlet on the label, IID, label shards); this module only
adds the held-out global test set, the per-client validation split and input checks with clear errors.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    GroupedNaturalIdPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
    ShardPartitioner,
    SizePartitioner,
)

from ffm.data.clusters import add_clusters
from ffm.data.config import PARTITIONERS, DataConfig, PartitionerSpec
from ffm.errors import DataError

logger = logging.getLogger("ffm")

__all__ = [
    "ClientData",
    "FederatedData",
    "make_partitioner",
    "partition_histogram",
    "pooled",
    "power_law_sizes",
    "split_federated",
    "unseen_count",
]


@dataclass
class ClientData:
    """One data owner's private examples: what it trains on and what it validates on."""

    train: datasets.Dataset
    val: datasets.Dataset


@dataclass
class FederatedData:
    """The global test set (None on a data owner's node), the clients' data (empty on the server) and the
    unseen parties' (``data.unseen_fraction``): partitioned like the clients, never given to any training."""

    test: datasets.Dataset | None
    clients: list[ClientData]
    label_names: list[str]
    unseen: list[ClientData] = field(default_factory=list)


def unseen_count(cfg: DataConfig, num_clients: int) -> int:
    """Parties held out of training: ``unseen_fraction`` of the clients, at least one when the share is > 0."""
    return max(1, round(cfg.unseen_fraction * num_clients)) if cfg.unseen_fraction > 0 else 0


def make_partitioner(cfg: DataConfig, num_clients: int, seed: int, pool: datasets.Dataset) -> Partitioner:
    """The flwr-datasets partitioner that ``data.partitioner`` names, for the training ``pool``."""
    return PARTITIONERS[cfg.partitioner].make(cfg, num_clients, seed, pool)


def _dirichlet(cfg: DataConfig, parties: int, seed: int, pool: datasets.Dataset) -> Partitioner:
    """flwr-datasets' Dirichlet partitioner with at least 10 examples a party where the draw allows it.

    A strong skew (alpha 0.1 over few classes) leaves some parties almost empty in most draws, and
    flwr-datasets gives up after 10 redraws; the floor then steps down (5, then 2: one training and one
    validation example), with a warning, rather than refusing a standard benchmark setting."""
    preferred = min(10, max(2, len(pool) // (4 * parties)))
    floors = sorted({preferred, min(preferred, 5), 2}, reverse=True)
    for floor in floors:
        partitioner = DirichletPartitioner(
            num_partitions=parties,
            partition_by="cluster" if cfg.partitioner == "clusters" else "label",
            alpha=cfg.alpha,
            min_partition_size=floor,
            self_balancing=False,
            seed=seed,
        )
        partitioner.dataset = pool
        try:
            with warnings.catch_warnings():  # flwr-datasets warns at every redraw
                warnings.simplefilter("ignore", UserWarning)
                partitioner.load_partition(0)  # draws every partition
        except ValueError:
            if floor == floors[-1]:
                raise
            continue
        if floor < preferred:
            logger.warning("data.alpha=%s: no Dirichlet draw gave every party %d examples; parties hold at "
                           "least %d", cfg.alpha, preferred, floor)
        return partitioner
    raise AssertionError(floors)  # the last floor returns or raises


PARTITIONERS.register("dirichlet", PartitionerSpec(_dirichlet, by_label=True))
PARTITIONERS.register("clusters", PartitionerSpec(_dirichlet))
def _grouped(cfg: DataConfig, parties: int, seed: int, pool: datasets.Dataset) -> Partitioner:
    """Every value of the partition column, whole, in ``parties`` groups (sorted values; the first group takes the
    remainder)."""
    if cfg.partition_column not in pool.column_names:
        raise DataError(f"data.partition_column '{cfg.partition_column}' is not a column of the data (it has "
                        f"{pool.column_names})")
    values = len(set(pool[cfg.partition_column]))
    if values < parties:
        raise DataError(f"data.partitioner=grouped: {values} distinct '{cfg.partition_column}' values cannot make "
                        f"{parties} parties; lower federation.num_clients to at most {values}")
    return GroupedNaturalIdPartitioner(partition_by=cfg.partition_column, group_size=values // parties,
                                       mode="allow-bigger", sort_unique_ids=True)


PARTITIONERS.register("iid", PartitionerSpec(lambda cfg, parties, seed, pool: IidPartitioner(num_partitions=parties)))
PARTITIONERS.register("natural", PartitionerSpec(
    lambda cfg, parties, seed, pool: NaturalIdPartitioner(partition_by=cfg.partition_column), by_column=True))
PARTITIONERS.register("grouped", PartitionerSpec(_grouped, by_column=True))
# The pool is already shuffled (train_test_split): sizes alone skew.
PARTITIONERS.register("quantity", PartitionerSpec(
    lambda cfg, parties, seed, pool: SizePartitioner(power_law_sizes(len(pool), parties, cfg.quantity_exponent))))
PARTITIONERS.register("shards", PartitionerSpec(
    lambda cfg, parties, seed, pool: ShardPartitioner(num_partitions=parties, partition_by="label",
                                                      num_shards_per_partition=cfg.shards_per_client, seed=seed),
    by_label=True))


def power_law_sizes(total: int, parts: int, exponent: float) -> list[int]:
    """Sizes proportional to (k + 1)^-exponent that sum to ``total``, each at least 2 (train + validation)."""
    if total < 2 * parts:
        raise DataError(f"data.partitioner=quantity needs at least 2 examples per client ({total} for {parts})")
    weights = [(k + 1) ** -exponent for k in range(parts)]
    spare = total - 2 * parts
    sizes = [2 + int(spare * w / sum(weights)) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


def _holdout(ds: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Seeded (rest, held-out) split that also works on tiny partitions (at least one example each); nothing
    held out at fraction 0."""
    if fraction <= 0:
        return ds, ds.select([])
    order = np.random.default_rng(seed).permutation(len(ds))
    n_held = min(len(ds) - 1, max(1, round(len(ds) * fraction)))
    return ds.select(sorted(order[n_held:])), ds.select(sorted(order[:n_held]))


def _stratified_split(ds: datasets.Dataset, seed: int, **size: float) -> datasets.DatasetDict:
    """``train_test_split`` stratified on the label; too few examples per class is a DataError, not a crash."""
    try:
        return ds.train_test_split(stratify_by_column="label", seed=seed, **size)
    except ValueError as exc:
        raise DataError(
            f"cannot split {len(ds)} examples stratified by label ({exc}); raise data.max_examples "
            "or data.test_fraction"
        ) from None


def _largest_groups(ds: datasets.Dataset, column: str, count: int) -> datasets.Dataset:
    """Keep the ``count`` values of ``column`` with the most examples (LEAF keeps the roles with enough lines)."""
    if column not in ds.column_names:
        raise DataError(f"data.partition_column '{column}' is not a column of the data (it has {ds.column_names})")
    values = ds[column]
    sizes: dict = {}
    for value in values:
        sizes[value] = sizes.get(value, 0) + 1
    if len(sizes) < count:
        raise DataError(
            f"data.partitioner=natural: the data has {len(sizes)} distinct '{column}' values for "
            f"federation.num_clients={count}; lower federation.num_clients to at most {len(sizes)}"
        )
    keep = set(sorted(sizes, key=lambda v: (-sizes[v], str(v)))[:count])
    return ds.select([i for i, value in enumerate(values) if value in keep])


def _tail(ds: datasets.Dataset, fraction: float) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(head, tail): the tail holds the last ``fraction`` of the examples in order, measured in characters of
    ``text`` when there is one (nanoGPT holds out the last 10% of the characters)."""
    sizes = [len(t) for t in ds["text"]] if "text" in ds.column_names else [1] * len(ds)
    cut, seen, total = len(ds), 0, sum(sizes)
    for i, size in enumerate(sizes):
        seen += size
        if seen >= (1.0 - fraction) * total:
            cut = i + 1
            break
    if not 0 < cut < len(ds):
        raise DataError(f"data.test_split=tail: data.test_fraction={fraction} of {len(ds)} examples leaves no "
                        "training or no test example")
    return ds.select(range(cut)), ds.select(range(cut, len(ds)))


def _test_split(ds: datasets.Dataset, cfg: DataConfig, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(pool, test): the tail in order; else stratified on the label when there is one, and for a by-column
    partition within each party."""
    if cfg.test_split == "tail":
        return _tail(ds, cfg.test_fraction)
    if "label" in ds.column_names:
        split = _stratified_split(ds, seed, test_size=cfg.test_fraction)
        return split["train"], split["test"]
    if PARTITIONERS[cfg.partitioner].by_column:  # every party keeps the same share: the test set covers all
        groups: dict = {}
        for i, value in enumerate(ds[cfg.partition_column]):
            groups.setdefault(value, []).append(i)
        held: list[int] = []
        for k, (_, rows) in enumerate(sorted(groups.items(), key=lambda item: str(item[0]))):
            order = np.random.default_rng(seed * 1_000_003 + k).permutation(len(rows))
            held += [rows[j] for j in order[: max(1, round(len(rows) * cfg.test_fraction))]]
        held_set = set(held)
        return ds.select([i for i in range(len(ds)) if i not in held_set]), ds.select(sorted(held))
    split = ds.train_test_split(test_size=cfg.test_fraction, seed=seed)
    return split["train"], split["test"]


def split_federated(ds: datasets.Dataset, cfg: DataConfig, num_clients: int, seed: int) -> FederatedData:
    """Global test split (stratified when labelled), then the rest partitioned across ``num_clients`` clients
    and the unseen parties (the last partition ids)."""
    label_names = ds.features["label"].names if "label" in ds.column_names else []
    parties = num_clients + unseen_count(cfg, num_clients)
    if cfg.partitioner == "natural":
        ds = _largest_groups(ds, cfg.partition_column, parties)
    if cfg.max_examples and cfg.max_examples < len(ds):
        if "label" in ds.column_names:
            ds = _stratified_split(ds, seed, train_size=cfg.max_examples)["train"]
        else:
            ds = ds.shuffle(seed=seed).select(range(cfg.max_examples))
    pool, test = _test_split(ds, cfg, seed)
    if cfg.partitioner == "clusters":
        pool = add_clusters(pool, cfg.clusters, seed)
    if parties * 2 > len(pool):
        raise DataError(
            f"{parties} parties (federation.num_clients={num_clients} and data.unseen_fraction="
            f"{cfg.unseen_fraction}) are too many for {len(pool)} training examples "
            f"(each needs at least 2); lower federation.num_clients or use more data"
        )
    clients: list[ClientData] = []
    for pid in range(parties):
        try:
            if pid == 0:
                partitioner = make_partitioner(cfg, parties, seed, pool)
                if not partitioner.is_dataset_assigned():  # the Dirichlet one draws while it is made
                    partitioner.dataset = pool
            part = partitioner.load_partition(pid)
        except ValueError as exc:
            raise DataError(
                f"data.partitioner={cfg.partitioner} could not split {len(pool)} examples across "
                f"{num_clients} clients ({exc}); raise data.alpha or lower federation.num_clients"
            ) from None
        if len(part) < 2:
            raise DataError(
                f"client {pid} got {len(part)} example(s) from data.partitioner={cfg.partitioner}; "
                "each needs at least 2: raise data.alpha, use more data or fewer clients"
            )
        train, val = _holdout(part, cfg.val_fraction, seed * 1_000_003 + pid)
        clients.append(ClientData(train=train, val=val))
    return FederatedData(test=test, clients=clients[:num_clients], label_names=list(label_names),
                         unseen=clients[num_clients:])


def partition_histogram(data: FederatedData) -> tuple[str, list[str], list[list[int]]] | None:
    """(column, its values, examples per client and value) of what the partition skews: the label, or the
    embedding cluster; None when the data has neither (a natural partition is one value per client)."""
    if not data.clients:
        return None
    columns = data.clients[0].train.column_names
    column = "cluster" if "cluster" in columns else "label" if "label" in columns else None
    if column is None:
        return None
    values = sorted({v for c in data.clients for v in c.train[column]})
    counts = [[list(c.train[column]).count(v) for v in values] for c in data.clients]
    labelled = column == "label" and bool(data.label_names)
    return column, [data.label_names[v] if labelled else str(v) for v in values], counts


POSITION = "position"  # a source whose order means something (a text stream) numbers its examples in this column


def pooled(data: FederatedData, parties: list[int] | None = None) -> FederatedData:
    """All clients' data (or ``parties``') held by one party: the centralized baseline (the privacy-violating
    upper bound). A source that numbers its examples (``position``) gets them back in its own order, so a text
    stream pooled from its parties reads as it was written."""
    clients = data.clients if parties is None else [data.clients[p] for p in parties]
    train = datasets.concatenate_datasets([c.train for c in clients])
    val = datasets.concatenate_datasets([c.val for c in clients])
    if POSITION in train.column_names:
        train = train.sort(POSITION)
    return FederatedData(test=data.test, clients=[ClientData(train=train, val=val)], label_names=data.label_names,
                         unseen=data.unseen)
