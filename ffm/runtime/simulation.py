"""Run a job in this process: the ServerApp over a LocalGrid of virtual nodes running the ClientApp."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import torch
from flwr.app import Context, RecordDict

from ffm.client import app as client_app
from ffm.config import job_to_run_config
from ffm.flwr_internals import SERVER_NODE_ID
from ffm.privacy.canaries import CANARY, present_canaries
from ffm.runtime.auto_workers import auto_workers, available_memory, resident_memory
from ffm.runtime.local_grid import LocalGrid
from ffm.server import app as server_app
from ffm.settings import Job
from ffm.workspace import workspace_for

logger = logging.getLogger(__name__)

__all__ = ["run_local"]


def run_local(job: Job, *, run_id: int = 1, node_configs: dict[int, dict[str, Any]] | None = None
              ) -> tuple[dict[str, Any], LocalGrid]:
    """Run ``job`` on the in-process LocalGrid; return its summary and the grid (for its byte counters).

    ``node_configs``: extra node-config entries by partition id, as a SuperNode's ``--node-config`` gives them
    (e.g. a data owner's ``policy-path``)."""
    run_config = job_to_run_config(job)
    num_nodes = job.mode.nodes(job.federation.num_clients)
    present = present_canaries(job)  # an audit's canary clients join after the data owners
    node_configs = {**(node_configs or {}), **{num_nodes + j: {CANARY: i} for j, i in enumerate(present)}}
    num_nodes += len(present)
    grid = LocalGrid(client_app, num_nodes=num_nodes, run_config=run_config, run_id=run_id,
                     workers=_workers(job), threads=job.federation.worker_threads, node_configs=node_configs)
    context = Context(run_id=run_id, node_id=SERVER_NODE_ID, node_config={}, state=RecordDict(), run_config=run_config)
    server_app(grid, context)
    with open(f"{job.run_dir}/summary.json") as handle:
        return json.load(handle), grid


def _workers(job: Job) -> int:
    """``federation.workers``; 0 (the default) resolved for this machine and this job's model
    (ffm.runtime.auto_workers): the workers share the torch threads this process was given (OMP_NUM_THREADS,
    torch.set_num_threads). The Workspace is built for it here, once: the ServerApp finds it built."""
    fed = job.federation
    if fed.workers:
        return fed.workers
    per_round = 1 if job.mode.pools_data else max(fed.min_train_clients, math.ceil(fed.fraction_train
                                                                                   * fed.num_clients))
    if per_round < 2:
        return 1
    params = list(workspace_for(job).model.parameters())
    chosen = auto_workers(clients_per_round=per_round, parameters=sum(p.numel() for p in params),
                          trainable=sum(p.numel() for p in params if p.requires_grad), cores=torch.get_num_threads(),
                          available=available_memory(), resident=resident_memory())
    logger.info("federation.workers=0: %d worker process%s on this machine", chosen, "es" * (chosen > 1))
    return chosen
