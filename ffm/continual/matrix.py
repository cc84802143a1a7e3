"""The accuracy matrix of a stream and its summary figures (Lopez-Paz & Ranzato, 2017, "GEM").

``R[i][j]`` is the primary metric, after training stage ``i``, on stage ``j``'s test set; ``b[j]`` that of the
initial model. Average accuracy is the mean of the last row; backward transfer the mean change on each
earlier stage since it was learnt (negative = forgetting, for a metric where higher is better); forward
transfer the mean gain on a stage before it is learnt over the initial model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_matrix", "transfer"]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def transfer(rows: list[list[float]], initial: list[float] | None = None) -> dict[str, Any]:
    """Average accuracy, backward and forward transfer of a (stages x stages) matrix."""
    if not rows:
        return {"average": None, "backward_transfer": None, "forward_transfer": None}
    last, k = rows[-1], len(rows)
    return {
        "average": _mean(last),
        "backward_transfer": _mean([last[j] - rows[j][j] for j in range(k - 1)]),
        "forward_transfer": None if initial is None else _mean([rows[j - 1][j] - initial[j] for j in range(1, k)]),
    }


def plot_matrix(rows: list[list[float]], metric: str, title: str, path: Path) -> Path:
    """A heat map of R with each cell's value, as ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(rows[0]) if rows else 0
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.2, 1.0 * len(rows) + 1.6))
    image = ax.imshow(rows, cmap="viridis", vmin=0.0, vmax=max(1.0, max(max(r) for r in rows)), aspect="auto")
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_xticks(range(k), [f"stage {j}" for j in range(k)])
    ax.set_yticks(range(len(rows)), [f"after {i}" for i in range(len(rows))])
    ax.set_xlabel(f"test set ({metric})")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
