"""Runtimes: the Grids that carry ffm's messages, and the in-process driver."""

from typing import Any

from ffm.runtime.flwr_internals import SERVER_NODE_ID, set_message_id, set_task_identity
from ffm.runtime.local_grid import LocalGrid

__all__ = ["SERVER_NODE_ID", "LocalGrid", "run_local", "set_message_id", "set_task_identity"]


def __getattr__(name: str) -> Any:
    # run_local imports the ServerApp and ClientApp, which import the mods, which import flwr_internals from
    # this package: loading it lazily keeps that chain free of a cycle.
    if name == "run_local":
        from ffm.runtime.simulation import run_local

        return run_local
    raise AttributeError(name)
