"""Data specification: sources read into (text, ClassLabel label); the split into test + client partitions."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from ffm.config import DataConfig
from ffm.data import FederatedData, load_source, load_table, load_text_folder, pooled, split_federated
from ffm.errors import DataError

NAMES = ["alpha", "beta", "gamma", "delta", "eps"]
COUNTS = [120, 100, 80, 60, 40]  # imbalanced on purpose: stratification must keep these shares


@pytest.fixture(scope="module")
def synthetic() -> datasets.Dataset:
    """400 examples with unique texts over 5 imbalanced classes."""
    texts = [f"{name} example {i}" for name, n in zip(NAMES, COUNTS, strict=True) for i in range(n)]
    labels = [k for k, n in enumerate(COUNTS) for _ in range(n)]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def _all_texts(data: FederatedData) -> list[str]:
    texts = list(data.test["text"])
    for client in data.clients:
        texts += list(client.train["text"]) + list(client.val["text"])
    return texts


def _client_labels(data: FederatedData) -> list[list[int]]:
    return [list(c.train["label"]) + list(c.val["label"]) for c in data.clients]


def _label_shares(labels: list[int], num_labels: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_labels) / len(labels)


def _mean_tv_distance(data: FederatedData, global_labels: list[int]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    k = len(data.label_names)
    reference = _label_shares(global_labels, k)
    return float(np.mean([0.5 * np.abs(_label_shares(c, k) - reference).sum() for c in _client_labels(data)]))


# ---- sources ------------------------------------------------------------------------------------------


def test_text_folder_reads_one_label_per_subfolder_sorted_by_name(tmp_path):
    for label, texts in {"tech": ["chips are fast", "new phone"], "sport": ["  a goal  "]}.items():
        (tmp_path / label).mkdir()
        for i, text in enumerate(texts):
            (tmp_path / label / f"{i}.txt").write_text(text)
    (tmp_path / "tech" / "notes.md").write_text("not a txt file")

    ds = load_text_folder(tmp_path)

    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == ["sport", "tech"]
    pairs = sorted(zip(ds["text"], ds["label"], strict=True))
    assert pairs == [("a goal", 0), ("chips are fast", 1), ("new phone", 1)]


def test_missing_text_folder_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="no-such-folder"):
        load_text_folder(tmp_path / "no-such-folder")


def test_text_folder_with_a_single_label_is_a_data_error(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.txt").write_text("x")

    with pytest.raises(DataError, match="two label"):
        load_text_folder(tmp_path)


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in frame.to_dict("records")))
    else:
        frame.to_parquet(path)


TABLE = pd.DataFrame({"body": ["rain today", "stocks up", "sunny", "bonds down"], "topic": ["w", "m", "w", "m"]})


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_table_reads_custom_text_and_label_columns(tmp_path, kind):
    path = tmp_path / f"news.{kind}"
    _write_table(path, TABLE)

    ds = load_table(path, kind, text_column="body", label_column="topic")

    assert ds.column_names == ["text", "label"]
    assert ds.features["label"].names == ["m", "w"]
    assert ds["text"] == list(TABLE["body"])
    assert [ds.features["label"].int2str(x) for x in ds["label"]] == list(TABLE["topic"])


def test_load_source_reads_the_table_that_data_path_names(tmp_path):
    path = tmp_path / "news.csv"
    _write_table(path, TABLE)

    ds = load_source(DataConfig(source="csv", path=str(path), text_column="body", label_column="topic"))

    assert len(ds) == 4 and ds.features["label"].names == ["m", "w"]


@pytest.mark.parametrize(("text_column", "label_column", "missing"), [("text", "topic", "text"), ("body", "y", "y")])
def test_table_without_the_named_column_is_a_data_error_naming_column_and_file(
    tmp_path, text_column, label_column, missing
):
    path = tmp_path / "news.csv"
    _write_table(path, TABLE)

    with pytest.raises(DataError) as info:
        load_table(path, "csv", text_column=text_column, label_column=label_column)

    assert f"'{missing}'" in str(info.value) and "news.csv" in str(info.value)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_missing_table_file_is_a_data_error_naming_it(tmp_path, kind):
    with pytest.raises(DataError, match=re.escape(f"nope.{kind}")):
        load_table(tmp_path / f"nope.{kind}", kind, "text", "label")


def test_unreadable_table_file_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")

    with pytest.raises(DataError, match=re.escape("broken.parquet")):
        load_table(path, "parquet", "text", "label")


@pytest.mark.parametrize("empty", ["", "   "])
def test_csv_with_an_empty_text_cell_is_a_data_error_naming_file_row_line_and_column(tmp_path, empty):
    path = tmp_path / "news.csv"
    _write_table(path, TABLE.assign(body=["rain today", "stocks up", empty, "bonds down"]))

    with pytest.raises(DataError) as info:
        load_table(path, "csv", text_column="body", label_column="topic")

    message = str(info.value)
    assert "news.csv" in message and "'body'" in message and "data.text_column" in message
    assert "row 3 (line 4 of the file, after the header)" in message


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_table_with_an_empty_label_cell_is_a_data_error_naming_file_row_and_column(tmp_path, kind):
    path = tmp_path / f"news.{kind}"
    _write_table(path, TABLE.assign(topic=["w", None, "w", "m"]))

    with pytest.raises(DataError) as info:
        load_table(path, kind, text_column="body", label_column="topic")

    message = str(info.value)
    assert f"news.{kind}" in message and "'topic'" in message and "data.label_column" in message
    assert "row 2" in message


def test_bbc_news_has_2225_articles_in_five_topics():
    ds = load_source(DataConfig())

    assert len(ds) == 2225
    assert ds.features["label"].names == ["business", "entertainment", "politics", "sports", "tech"]


# ---- split_federated ----------------------------------------------------------------------------------


def test_global_test_split_is_test_fraction_of_the_data_and_stratified(synthetic):
    data = split_federated(synthetic, DataConfig(test_fraction=0.2), num_clients=4, seed=0)

    assert abs(len(data.test) - 0.2 * len(synthetic)) <= 1
    test_shares = _label_shares(list(data.test["label"]), len(NAMES))
    global_shares = _label_shares(list(synthetic["label"]), len(NAMES))
    assert np.abs(test_shares - global_shares).max() <= 1.0 / len(data.test)


def test_max_examples_keeps_a_stratified_subset_of_that_size(synthetic):
    data = split_federated(synthetic, DataConfig(max_examples=200), num_clients=4, seed=0)

    texts = _all_texts(data)
    assert len(texts) == 200 and set(texts) <= set(synthetic["text"])
    kept = Counter(t.split()[0] for t in texts)
    assert [kept[name] for name in NAMES] == [c // 2 for c in COUNTS]


@pytest.mark.parametrize("partitioner", ["dirichlet", "iid", "quantity"])
@pytest.mark.parametrize("max_examples", [0, 250])
def test_test_and_client_splits_are_disjoint_and_cover_every_example_once(synthetic, partitioner, max_examples):
    cfg = DataConfig(partitioner=partitioner, max_examples=max_examples)

    data = split_federated(synthetic, cfg, num_clients=5, seed=1)

    texts = _all_texts(data)
    assert len(texts) == (max_examples or len(synthetic))
    assert len(set(texts)) == len(texts)
    assert set(texts) <= set(synthetic["text"])


def test_bbc_news_split_keeps_every_article_exactly_once():
    bbc = load_source(DataConfig())

    data = split_federated(bbc, DataConfig(), num_clients=10, seed=0)

    assert Counter(_all_texts(data)) == Counter(bbc["text"])  # a multiset: BBC News repeats some articles


def test_every_client_has_train_and_validation_examples_in_the_val_fraction(synthetic):
    data = split_federated(synthetic, DataConfig(val_fraction=0.25), num_clients=5, seed=0)

    for client in data.clients:
        size = len(client.train) + len(client.val)
        assert len(client.train) >= 1 and len(client.val) >= 1
        assert abs(len(client.val) - 0.25 * size) <= 1


def test_label_skew_grows_as_dirichlet_alpha_shrinks(synthetic):
    global_labels = list(synthetic["label"])

    def skew(alpha: float) -> float:
        splits = [split_federated(synthetic, DataConfig(alpha=alpha), 5, seed) for seed in range(4)]
        return float(np.mean([_mean_tv_distance(data, global_labels) for data in splits]))

    assert skew(0.1) > skew(1.0) > skew(100.0)


def test_iid_partitions_have_equal_sizes_and_near_global_label_shares(synthetic):
    data = split_federated(synthetic, DataConfig(partitioner="iid"), num_clients=5, seed=0)

    sizes = [len(labels) for labels in _client_labels(data)]
    assert max(sizes) - min(sizes) <= 1
    assert _mean_tv_distance(data, list(synthetic["label"])) < 0.2


def test_shards_partitions_are_disjoint_equal_sized_and_label_skewed(synthetic):
    data = split_federated(synthetic, DataConfig(partitioner="shards", shards_per_client=2), num_clients=4, seed=0)

    texts = _all_texts(data)
    assert len(set(texts)) == len(texts)
    assert len(texts) > len(synthetic) - 4 * 2  # equal shards drop less than one shard's worth of remainder
    sizes = {len(labels) for labels in _client_labels(data)}
    assert len(sizes) == 1
    for labels in _client_labels(data):
        assert len(set(labels)) <= 2 * 2  # two label-sorted shards, each spanning at most two labels
    assert _mean_tv_distance(data, list(synthetic["label"])) > 0.3


def test_same_seed_gives_identical_partitions(synthetic):
    first = split_federated(synthetic, DataConfig(), num_clients=5, seed=3)
    second = split_federated(synthetic, DataConfig(), num_clients=5, seed=3)

    assert first.test["text"] == second.test["text"]
    for a, b in zip(first.clients, second.clients, strict=True):
        assert a.train["text"] == b.train["text"] and a.val["text"] == b.val["text"]


def test_different_seed_gives_different_partitions(synthetic):
    first = split_federated(synthetic, DataConfig(), num_clients=5, seed=3)
    second = split_federated(synthetic, DataConfig(), num_clients=5, seed=4)

    assert first.test["text"] != second.test["text"]
    assert [c.train["text"] for c in first.clients] != [c.train["text"] for c in second.clients]


def test_more_clients_than_examples_is_a_data_error_naming_num_clients(synthetic):
    with pytest.raises(DataError, match=re.escape("federation.num_clients")):
        split_federated(synthetic, DataConfig(max_examples=50), num_clients=30, seed=0)


def test_a_strong_skew_that_leaves_parties_nearly_empty_steps_the_floor_down_rather_than_refusing(caplog):
    # AG News-like: 4 classes, 1,200 examples, 10 parties at alpha 0.1; in most draws some party gets < 10
    rng = np.random.default_rng(0)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES[:4])})
    four = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(1200)],
                                       "label": rng.integers(0, 4, 1200).tolist()}, features=features)

    splits = [split_federated(four, DataConfig(alpha=0.1), num_clients=10, seed=seed) for seed in range(3)]

    sizes = [[len(c.train) + len(c.val) for c in split.clients] for split in splits]
    assert all(min(s) >= 2 and sum(s) == 960 for s in sizes), sizes  # 20% is the test set
    assert any(min(s) < 10 for s in sizes) and "parties hold at least" in caplog.text


def test_dirichlet_that_cannot_give_every_client_data_is_a_data_error_naming_the_fix(synthetic):
    with pytest.raises(DataError, match=re.escape("data.alpha")):
        split_federated(synthetic, DataConfig(alpha=0.001), num_clients=20, seed=0)


@pytest.mark.parametrize("max_examples", [3, 10])
def test_too_few_examples_to_stratify_is_a_data_error_naming_max_examples(synthetic, max_examples):
    with pytest.raises(DataError, match=re.escape("data.max_examples")):
        split_federated(synthetic, DataConfig(max_examples=max_examples), num_clients=1, seed=0)


def test_pooled_gives_one_party_holding_every_client_example(synthetic):
    data = split_federated(synthetic, DataConfig(), num_clients=5, seed=0)

    pool = pooled(data)

    assert len(pool.clients) == 1 and pool.test is data.test
    assert sorted(_all_texts(pool)) == sorted(_all_texts(data))


def _skew(data) -> float:
    """Mean total-variation distance between each client's cluster mix and the pool's."""
    from ffm.data import partition_histogram

    _, _, counts = partition_histogram(data)
    totals = [sum(col) for col in zip(*counts, strict=True)]
    pool = [t / sum(totals) for t in totals]
    return sum(0.5 * sum(abs(n / sum(row) - p) for n, p in zip(row, pool, strict=True)) for row in counts) / len(counts)


@pytest.mark.slow  # embeds the texts with the real MiniLM
def test_the_embedding_cluster_partition_is_disjoint_complete_and_less_skewed_as_alpha_rises():
    from ffm.config import DataConfig
    from ffm.data import load_source, split_federated

    source = load_source(DataConfig(source="bbc_news"))
    source = source.add_column("row", list(range(len(source))))
    split = {alpha: split_federated(source, DataConfig(source="bbc_news", partitioner="clusters", clusters=5,
                                                       alpha=alpha, max_examples=400), num_clients=4, seed=0)
             for alpha in (0.1, 1000.0)}

    data = split[0.1]
    parts = [set(data.test["row"])] + [set(c.train["row"]) | set(c.val["row"]) for c in data.clients]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 400  # disjoint, and all 400 are placed
    assert "cluster" in data.clients[0].train.column_names
    assert _skew(split[0.1]) > 2 * _skew(split[1000.0])


def test_quantity_skew_gives_power_law_sizes_with_the_global_label_mix(synthetic):
    data = split_federated(synthetic, DataConfig(partitioner="quantity", quantity_exponent=1.0), num_clients=5, seed=0)

    sizes = [len(c.train) + len(c.val) for c in data.clients]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 3 * sizes[-1]  # roughly 1 : 1/2 : ... : 1/5
    assert sum(sizes) == len(synthetic) - len(data.test)


def test_power_law_sizes_sum_to_the_total_and_give_every_client_two():
    from ffm.data.partition import power_law_sizes

    assert sum(power_law_sizes(103, 7, 2.0)) == 103 and min(power_law_sizes(103, 7, 2.0)) >= 2
    assert power_law_sizes(40, 4, 0.0) == [10, 10, 10, 10]  # exponent 0: equal sizes
