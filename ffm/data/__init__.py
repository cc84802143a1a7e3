"""Offline data sources and their split across clients."""

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

__all__ = [
    "ClientData",
    "FederatedData",
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
    "partition_histogram",
    "party_dir",
    "pooled",
    "split_federated",
]
