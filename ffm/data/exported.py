"""A split written to disk as one folder per party, so that in a deployment each party opens only its own.

    DIR/partition-<k>/train.jsonl, val.jsonl, labels.json   data owner k's examples (its SuperNode reads these)
    DIR/server/test.jsonl, labels.json                      the held-out test set (the ServerApp reads these)

Each folder carries its own copy of the label names, so class ids agree everywhere without any party
reading another's folder. Rows keep their order, so a federation on the exported folders trains on exactly
the examples (and batches) the in-process simulation of the same job uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from ffm.data.partition import ClientData, FederatedData
from ffm.errors import DataError

__all__ = ["export_split", "load_party", "load_server_test", "party_dir"]


def party_dir(root: str | Path, partition_id: int) -> Path:
    """The folder of data owner ``partition_id`` inside an exported split."""
    return Path(root) / f"partition-{partition_id}"


def _write(ds: datasets.Dataset, path: Path) -> None:
    """Every column of every row (text, label, a role, image pixels as nested lists), one JSON line each."""
    path.write_text("".join(json.dumps(row) + "\n" for row in ds.to_list()), encoding="utf-8")


def _read(path: Path, names: list[str]) -> datasets.Dataset:
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist; write the party folders with `ffm deploy split`")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    ds = datasets.Dataset.from_list(rows)
    if names and "label" in ds.column_names:  # class ids agree everywhere through the folder's labels.json
        ds = ds.cast_column("label", datasets.ClassLabel(names=names))
    return ds


def _labels(folder: Path) -> list[str]:
    path = folder / "labels.json"
    if not path.is_file():
        raise DataError(f"'{folder}' is not a party folder (no labels.json); write it with `ffm deploy split`")
    return list(json.loads(path.read_text()))


def export_split(data: FederatedData, root: str | Path) -> list[Path]:
    """Write every client's (train, val) and the server's test set; return the folders written."""
    folders: list[Path] = []
    parties = [(party_dir(root, k), {"train": c.train, "val": c.val}) for k, c in enumerate(data.clients)]
    for folder, splits in [*parties, (Path(root) / "server", {"test": data.test})]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "labels.json").write_text(json.dumps(data.label_names))
        for name, ds in splits.items():
            _write(ds, folder / f"{name}.jsonl")
        folders.append(folder)
    return folders


def load_party(folder: str | Path) -> FederatedData:
    """One data owner's own examples (and nothing of anyone else's), as a one-client FederatedData."""
    folder = Path(folder)
    names = _labels(folder)
    client = ClientData(train=_read(folder / "train.jsonl", names), val=_read(folder / "val.jsonl", names))
    return FederatedData(test=None, clients=[client], label_names=names)


def load_server_test(folder: str | Path) -> FederatedData:
    """The server's held-out test set alone (no client data)."""
    folder = Path(folder)
    names = _labels(folder)
    return FederatedData(test=_read(folder / "test.jsonl", names), clients=[], label_names=names)
