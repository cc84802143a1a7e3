"""Offline data sources, their split across clients, and the stream of stages a run consumes."""

from ffm.data import chat  # noqa: F401 - registers the chat sources (instructions, preferences, derived)
from ffm.data.config import PARTITIONERS, SOURCES, DataConfig, PartitionerSpec, SourceSpec
from ffm.data.exported import export_split, load_party, load_server_test, party_dir
from ffm.data.partition import (
    ClientData,
    FederatedData,
    make_partitioner,
    partition_histogram,
    pooled,
    split_federated,
)
from ffm.data.sources import bbc_news_dir, data_dir, load_shakespeare, load_source, load_table, load_text_folder
from ffm.data.stream import STREAMS, Stream, open_stream

__all__ = [
    "PARTITIONERS",
    "SOURCES",
    "STREAMS",
    "ClientData",
    "DataConfig",
    "FederatedData",
    "PartitionerSpec",
    "SourceSpec",
    "Stream",
    "bbc_news_dir",
    "data_dir",
    "export_split",
    "load_party",
    "load_server_test",
    "load_shakespeare",
    "load_source",
    "load_table",
    "load_text_folder",
    "make_partitioner",
    "open_stream",
    "partition_histogram",
    "party_dir",
    "pooled",
    "split_federated",
]
