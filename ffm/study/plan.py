"""What a study runs: every (condition, mode, seed, grid point) of one job, each in its own run directory.

A *grid* key is tuned: each mode gets the value with the best validation metric (mean over seeds), never
chosen on the test set. A *vary* key is a condition (e.g. ``data.alpha=0.5,0.1``): the report gives each its
own tables and chooses within it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ffm.errors import ConfigError
from ffm.modes import Mode

__all__ = ["StudyPlan", "StudyRun", "pairs_text", "parse_axis"]


@dataclass(frozen=True)
class StudyRun:
    """One run of a study: its name, mode, seed, grid point and condition."""

    name: str
    mode: str
    seed: int
    grid: tuple[tuple[str, str], ...]  # (key, value) pairs of the grid point
    condition: tuple[tuple[str, str], ...]  # (key, value) pairs of the condition

    @property
    def overrides(self) -> list[str]:
        """The ``key=value`` overrides that make the study's job this run."""
        return [f"mode={self.mode}", f"seed={self.seed}", *(f"{k}={v}" for k, v in self.condition + self.grid)]


def parse_axis(texts: list[str], flag: str) -> dict[str, list[str]]:
    """``["train.lr=1e-4,5e-4"]`` -> ``{"train.lr": ["1e-4", "5e-4"]}``, with a clear error for a bad one."""
    axes: dict[str, list[str]] = {}
    for text in texts:
        key, sep, values = text.partition("=")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not items:
            raise ConfigError(f"{flag} '{text}': write KEY=V1,V2 (e.g. {flag} train.lr=1e-4,5e-4,1e-3)")
        if key.strip() in ("mode", "seed", "run_dir", "resume"):
            raise ConfigError(f"{flag} cannot set '{key.strip()}': the study sets it (use --modes / --seeds)")
        axes[key.strip()] = items
    return axes


def _label(pairs: tuple[tuple[str, str], ...]) -> str:
    return "-".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in pairs)


@dataclass
class StudyPlan:
    """Every run of a study: modes x seeds x grid points x conditions."""

    modes: list[str]
    seeds: list[int]
    grid: dict[str, list[str]] = field(default_factory=dict)
    vary: dict[str, list[str]] = field(default_factory=dict)
    tune_seeds: int = 0  # > 0: the grid runs on the first this many seeds; the other seeds at the chosen point

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in Mode.training()]
        if unknown or not self.modes:
            raise ConfigError(f"--modes: {unknown or 'none given'} not among {', '.join(Mode.training())}")
        if not self.seeds:
            raise ConfigError("--seeds must be at least 1")
        shared = set(self.grid) & set(self.vary)
        if shared:
            raise ConfigError(f"{sorted(shared)} is both a --grid and a --vary key; choose one")
        if not 0 <= self.tune_seeds <= len(self.seeds):
            raise ConfigError(f"--tune-seeds must be in 0..--seeds ({len(self.seeds)}), got {self.tune_seeds}")

    def conditions(self) -> list[tuple[tuple[str, str], ...]]:
        """Every combination of the ``--vary`` values (one empty condition without any)."""
        keys = list(self.vary)
        return [tuple(zip(keys, values, strict=True)) for values in itertools.product(*self.vary.values())]

    def grid_points(self) -> list[tuple[tuple[str, str], ...]]:
        """Every combination of the ``--grid`` values (one empty point without any)."""
        keys = list(self.grid)
        return [tuple(zip(keys, values, strict=True)) for values in itertools.product(*self.grid.values())]

    def runs(self, chosen: dict[tuple[str, str], str] | None = None) -> list[StudyRun]:
        """Every run, named uniquely, in a stable order. With ``tune_seeds``: the grid on the tuning seeds, and,
        once ``chosen`` ((condition, mode) -> the chosen grid point, as results rows write it) is known, the other
        seeds at each chosen point."""
        tuning = self.seeds[: self.tune_seeds] if self.tune_seeds else self.seeds
        out = []
        for condition in self.conditions():
            for mode in self.modes:
                for seed in self.seeds:
                    for point in self.grid_points():
                        if seed not in tuning and (chosen is None or chosen.get((pairs_text(condition), mode))
                                                   != pairs_text(point)):
                            continue
                        name = "-".join(p for p in (_label(condition), mode, f"seed{seed}", _label(point)) if p)
                        out.append(StudyRun(name, mode, seed, point, condition))
        return out


def pairs_text(pairs: tuple[tuple[str, str], ...]) -> str:
    """(key, value) pairs as a results row writes them: ``k=v;k2=v2``."""
    return ";".join(f"{k}={v}" for k, v in pairs)
