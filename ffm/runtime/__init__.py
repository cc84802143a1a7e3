"""Runtimes: the Grids that carry ffm's messages (the in-process LocalGrid and its worker pool, a Flower
federation's helpers, the warm ClientApp worker) and :func:`run_local`, which runs a job on the LocalGrid."""

from typing import Any

from ffm.flwr_internals import SERVER_NODE_ID, set_message_id, set_task_identity

__all__ = ["SERVER_NODE_ID", "LocalGrid", "run_local", "set_message_id", "set_task_identity"]


def __getattr__(name: str) -> Any:
    # The LocalGrid brings torch and transformers, run_local the ServerApp, the ClientApp and every plug-in: both
    # load on first use, so that a command that needs only the deployment helpers (`ffm deploy register`) starts
    # in about a second.
    if name == "LocalGrid":
        from ffm.runtime.local_grid import LocalGrid

        return LocalGrid
    if name == "run_local":
        from ffm.runtime.simulation import run_local

        return run_local
    raise AttributeError(name)
