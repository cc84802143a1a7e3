"""Runtimes: the Grids that carry ffm's messages, and the in-process driver."""

from ffm.runtime.local_grid import SERVER_NODE_ID, LocalGrid, set_task_identity
from ffm.runtime.simulation import run_local

__all__ = ["SERVER_NODE_ID", "LocalGrid", "run_local", "set_task_identity"]
