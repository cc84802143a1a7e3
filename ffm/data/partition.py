"""Split a labelled data set into a global test set and per-client (train, validation) partitions.

The partitioners are flwr-datasets' own (Dirichlet on the label, IID, label shards); this module only
adds the held-out global test set, the per-client validation split and input checks with clear errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner, ShardPartitioner

from ffm.config import DataConfig
from ffm.errors import DataError

__all__ = ["ClientData", "FederatedData", "make_partitioner", "pooled", "split_federated"]


@dataclass
class ClientData:
    """One data owner's private examples: what it trains on and what it validates on."""

    train: datasets.Dataset
    val: datasets.Dataset


@dataclass
class FederatedData:
    """The global test set (None on a data owner's node) and the clients' data (empty on the server)."""

    test: datasets.Dataset | None
    clients: list[ClientData]
    label_names: list[str]


def make_partitioner(cfg: DataConfig, num_clients: int, seed: int, num_examples: int) -> Partitioner:
    """The flwr-datasets partitioner that ``data.partitioner`` names."""
    if cfg.partitioner == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if cfg.partitioner == "shards":
        return ShardPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_shards_per_partition=cfg.shards_per_client,
            seed=seed,
        )
    return DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        alpha=cfg.alpha,
        # Every client needs at least one training and one validation example.
        min_partition_size=min(10, max(2, num_examples // (4 * num_clients))),
        self_balancing=False,
        seed=seed,
    )


def _holdout(ds: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Seeded (rest, held-out) split that also works on tiny partitions (at least one example each)."""
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


def split_federated(ds: datasets.Dataset, cfg: DataConfig, num_clients: int, seed: int) -> FederatedData:
    """Global stratified test split, then the rest partitioned across ``num_clients`` clients."""
    label_names = ds.features["label"].names
    if cfg.max_examples and cfg.max_examples < len(ds):
        ds = _stratified_split(ds, seed, train_size=cfg.max_examples)["train"]
    split = _stratified_split(ds, seed, test_size=cfg.test_fraction)
    pool, test = split["train"], split["test"]
    if num_clients * 2 > len(pool):
        raise DataError(
            f"federation.num_clients={num_clients} is too many for {len(pool)} training examples "
            f"(each client needs at least 2); lower federation.num_clients or use more data"
        )
    partitioner = make_partitioner(cfg, num_clients, seed, len(pool))
    partitioner.dataset = pool
    clients: list[ClientData] = []
    for pid in range(num_clients):
        try:
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
    return FederatedData(test=test, clients=clients, label_names=list(label_names))


def pooled(data: FederatedData) -> FederatedData:
    """All clients' data held by one party: the centralized baseline (the privacy-violating upper bound)."""
    train = datasets.concatenate_datasets([c.train for c in data.clients])
    val = datasets.concatenate_datasets([c.val for c in data.clients])
    return FederatedData(test=data.test, clients=[ClientData(train=train, val=val)], label_names=data.label_names)
