"""What each party holds, shown before a run trains: a table in the log and ``partition.png`` in the run directory
(examples per client and label, or per client and embedding cluster)."""

from __future__ import annotations

from pathlib import Path

from ffm.data import FederatedData, partition_histogram

__all__ = ["report_partition"]


def report_partition(data: FederatedData, run_dir: Path) -> str | None:
    """Write ``run_dir/partition.png``; return the histogram as a text table (None when nothing is skewed)."""
    histogram = partition_histogram(data)
    if histogram is None:
        return None
    column, values, counts = histogram
    _plot(column, values, counts, run_dir / "partition.png")
    width = max(6, *(len(v) for v in values))
    lines = [f"examples per client and {column}:", "client " + " ".join(f"{v[:width]:>{width}}" for v in values)]
    lines += [f"{pid:>6} " + " ".join(f"{n:>{width}}" for n in row) for pid, row in enumerate(counts)]
    return "\n".join(lines)


def _plot(column: str, values: list[str], counts: list[list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(counts) + 2), 3.5))
    bottom = [0] * len(counts)
    for j, value in enumerate(values):
        heights = [row[j] for row in counts]
        ax.bar(range(len(counts)), heights, bottom=bottom, label=value)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("training examples")
    ax.set_title(f"what each client holds, by {column}")
    ax.legend(fontsize=7, ncol=2, title=column)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
