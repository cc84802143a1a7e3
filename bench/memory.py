"""Peak memory of a process tree, sampled from /proc (Linux): the sum of each process's PSS.

PSS (proportional set size) charges a page shared by k processes 1/k to each, so the sum is the memory the
tree really holds: forked workers that share the frozen base copy-on-write are not counted k times (RSS would).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def tree_pss(root: int) -> tuple[float, int]:
    """PSS of ``root`` and all its descendants now, in MiB, and how many processes the tree holds."""
    total, count, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    count += 1
                    break
        except OSError:
            continue
        todo += _children(pid)
    return total / 1024, count


def run_measured(cmd: list[str], env: dict, log: Path, every: float = 0.2) -> tuple[int, float, float, int]:
    """Run ``cmd``; return (exit code, wall seconds, peak PSS of its tree in MiB, most processes in the tree)."""
    peak, most = 0.0, 0
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak, most
            while not done.is_set():
                pss, count = tree_pss(proc.pid)
                peak, most = max(peak, pss), max(most, count)
                time.sleep(every)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
    return code, time.perf_counter() - start, peak, most
