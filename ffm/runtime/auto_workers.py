"""How many LocalGrid worker processes pay off on this machine (``federation.workers=0``, the default).

Measured (bench/results/peer.md, scale.md): a worker costs a fork per round, its messages' copies and its
own activations and optimizer state (about half the process's resident memory for MiniLM + LoRA); it pays
back only when a client's steps take long enough to run side by side. So: one worker per core that torch
was given (its thread count: OMP_NUM_THREADS or torch.set_num_threads), no more than the clients of a
round, no more than the free memory holds, and one worker for small models (the test suite's: a step takes
milliseconds there, and forking costs more than it saves).
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["SMALL_MODEL", "auto_workers", "available_memory", "resident_memory"]

SMALL_MODEL = 5_000_000  # parameters; below this one worker (a step of such a model takes milliseconds)
MEMORY_SHARE = 0.8  # of the memory available now, what the workers may take


def _meminfo_bytes(path: Path, field: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory() -> int | None:
    """Bytes the kernel says new work can take without swapping (MemAvailable); None where unknown."""
    return _meminfo_bytes(Path("/proc/meminfo"), "MemAvailable")


def resident_memory() -> int | None:
    """This process's resident set in bytes; None where unknown."""
    return _meminfo_bytes(Path("/proc/self/status"), "VmRSS")


def auto_workers(
    *,
    clients_per_round: int,
    parameters: int,
    trainable: int,
    cores: int,
    available: int | None,
    resident: int | None,
) -> int:
    """Worker processes for a round of ``clients_per_round`` clients on a model of ``parameters`` parameters
    (``trainable`` of them trained), given ``cores`` cores (torch threads), ``available`` free bytes and this
    process's ``resident`` bytes.

    A worker's own memory is estimated as half the resident process (what the measured workers wrote: their
    activations and heap) plus four fp32 copies of the trainable parameters (the written weights, gradients
    and two Adam moments).
    """
    if clients_per_round < 2 or cores < 2 or parameters < SMALL_MODEL:
        return 1
    fitting = cores
    if available is not None and resident is not None:
        per_worker = resident // 2 + 16 * trainable
        fitting = math.floor(MEMORY_SHARE * available / per_worker)
    return max(1, min(cores, clients_per_round, fitting))
