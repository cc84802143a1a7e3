"""Run a job in this process: the ServerApp over a LocalGrid of virtual nodes running the ClientApp."""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Context, RecordDict

from ffm.client import app as client_app
from ffm.config import JobConfig, job_to_run_config
from ffm.runtime.flwr_internals import SERVER_NODE_ID
from ffm.runtime.local_grid import LocalGrid
from ffm.server import app as server_app

__all__ = ["run_local"]


def run_local(job: JobConfig, *, run_id: int = 1) -> tuple[dict[str, Any], LocalGrid]:
    """Run ``job`` on the in-process LocalGrid; return its summary and the grid (for its byte counters)."""
    run_config = job_to_run_config(job)
    num_nodes = 1 if job.mode == "centralized" else job.federation.num_clients
    grid = LocalGrid(client_app, num_nodes=num_nodes, run_config=run_config, run_id=run_id,
                     workers=job.federation.workers, threads=job.federation.worker_threads)
    context = Context(run_id=run_id, node_id=SERVER_NODE_ID, node_config={}, state=RecordDict(), run_config=run_config)
    server_app(grid, context)
    with open(f"{job.run_dir}/summary.json") as handle:
        return json.load(handle), grid
