"""The ``data`` section, and the two registries it chooses from: data sources and partitioners.

A source is one file plus one ``SOURCES.register`` line (a loader that returns a ``datasets.Dataset``); a
partitioner likewise in ``PARTITIONERS`` (a factory of a flwr-datasets ``Partitioner``). Their names are the
allowed values of ``data.source`` and ``data.partitioner``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ffm.registry import Registry
from ffm.settings import option, require

__all__ = ["PARTITIONERS", "SOURCES", "DataConfig", "PartitionerSpec", "SourceSpec"]


@dataclass(frozen=True)
class SourceSpec:
    """A data source: ``load(data_config)`` returns its examples (``text``/``image`` and a ClassLabel ``label``,
    or Tiny Shakespeare's ``role``); ``reads_path``: it opens the file or folder ``data.path`` names."""

    load: Callable[[DataConfig], Any]
    reads_path: bool = False


@dataclass(frozen=True)
class PartitionerSpec:
    """A split across parties: ``make(data_config, parties, seed, pool)`` returns a flwr-datasets Partitioner of
    the training pool; ``by_label``: it skews the label (so a stage with one class cannot be split by it);
    ``by_column``: each party is one or more values of ``data.partition_column`` (a random test split then holds
    out a share within each value, so that the test set covers every party)."""

    make: Callable[[DataConfig, int, int, Any], Any]
    by_label: bool = False
    by_column: bool = False


SOURCES: Registry[SourceSpec] = Registry("data.source")
PARTITIONERS: Registry[PartitionerSpec] = Registry("data.partitioner")


@dataclass
class DataConfig:
    """Where the examples come from and how they are split into a test set and the parties' data."""

    source: str = option(
        "bbc_news",
        "data set: bundled text (bbc_news, ag_news; tinyshakespeare: speeches by role; tinyshakespeare_raw: the "
        "file's blocks as written, nanoGPT's text), images (mnist, digits), "
        "or your own files (folder, image_folder, csv, jsonl, parquet read data.path); chat data: instructions "
        "(Alpaca, messages or ShareGPT rows) and preferences (prompt/chosen/rejected) read data.path; derived "
        "from the news corpora: ag_news_headlines, ag_news_sections, bbc_headlines, ag_news_headline_pairs",
        choices=lambda: SOURCES.names(),
    )
    path: str = option("", "file or folder for source folder/csv/jsonl/parquet")
    text_column: str = option("text", "column that holds the text (csv/jsonl/parquet)")
    label_column: str = option("label", "column that holds the label (csv/jsonl/parquet; instructions and "
                               "preferences: optional, a column to split parties by, e.g. a topic or a user)")
    rejected_model: str = option("", "ag_news_headline_pairs: the model whose own greedy headline is each pair's "
                                 "rejected reply (generated once, cached); empty = another story's headline")
    max_examples: int = option(0, "use a stratified subset of this many examples (0 = all)")
    test_fraction: float = option(0.2, "share of examples held out as the global test set (stratified)")
    val_fraction: float = option(0.1, "share of each client's examples held out as its local validation split (0 = "
                                 "none: every example trains; then no validation, federation.fraction_evaluate=0)")
    test_split: str = option("random", "how the global test set is held out: random (stratified on the label when "
                             "there is one; within each party for a by-column partition) or tail (the last "
                             "test_fraction of the source in its own order, by text length: nanoGPT's split)",
                             choices=("random", "tail"))
    unseen_fraction: float = option(
        0.0, "parties that never train, as a share of federation.num_clients (0.2 with 10 clients adds 2): "
        "partitioned like the others, they measure generalization to unseen parties (train.eval_parties)"
    )
    partitioner: str = option(
        "dirichlet", "how training data splits across clients: dirichlet (on the label), iid, shards, natural "
        "(by partition_column: the num_clients largest values), grouped (every value of partition_column, whole, "
        "in num_clients groups: flwr-datasets' GroupedNaturalIdPartitioner), clusters (Dirichlet over k-means "
        "clusters of MiniLM embeddings: skew without labels), quantity (IID labels, power-law sizes)",
        choices=lambda: PARTITIONERS.names(),
    )
    quantity_exponent: float = option(1.0, "partitioner=quantity: client k holds a share proportional to "
                                      "(k + 1)^-exponent")
    clusters: int = option(8, "partitioner=clusters: k of k-means over the texts' sentence embeddings")
    partition_column: str = option(
        "label", "partitioner=natural: the column whose values are the parties (role for tinyshakespeare); the "
        "num_clients largest parties take part"
    )
    alpha: float = option(0.5, "Dirichlet concentration on the label (smaller = more skewed clients)")
    shards_per_client: int = option(2, "label-sorted shards per client (partitioner=shards)")
    test_path: str = option(
        "", "deployment: the server's test folder from `ffm deploy split` (then it opens no client's data)"
    )

    def __post_init__(self) -> None:
        reads_path = self.source in SOURCES and SOURCES[self.source].reads_path
        require(not reads_path or bool(self.path), f"data.path must be set for data.source={self.source}")
        require(0.0 < self.test_fraction < 1.0, "data.test_fraction must be in (0, 1)")
        require(0.0 <= self.val_fraction < 1.0, "data.val_fraction must be in [0, 1)")
        require(0.0 <= self.unseen_fraction <= 1.0, "data.unseen_fraction must be in [0, 1]")
        require(self.max_examples >= 0, "data.max_examples must be 0 (all) or positive")
        require(self.alpha > 0.0, f"data.alpha must be > 0 (got {self.alpha}); try 0.5 for skewed or 100 for "
                "near-IID")
        require(self.shards_per_client >= 1, "data.shards_per_client must be at least 1")
        require(self.clusters >= 2, "data.clusters must be at least 2")
        require(self.quantity_exponent >= 0.0, f"data.quantity_exponent must be >= 0, got {self.quantity_exponent}")
