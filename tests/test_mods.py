"""Client mods named in the job run around the ClientApp: update clipping bounds every update."""

from __future__ import annotations

import pytest
import torch
from flwr.app import MessageType

from ffm.runtime import run_local


def _update_norms(carried: list) -> list[float]:
    norms = []
    for msg, reply in carried:
        if msg.metadata.message_type == MessageType.TRAIN:
            sent = msg.content["arrays"].to_torch_state_dict()
            got = reply.content["arrays"].to_torch_state_dict()
            norms.append(float(torch.sqrt(sum(((got[k] - sent[k]).double() ** 2).sum() for k in sent))))
    return norms


def test_fixed_clipping_mod_bounds_every_updates_l2_norm(job_factory, carried):
    run_local(job_factory("free", train__lr=0.05))
    free = _update_norms(carried)
    carried.clear()

    run_local(job_factory("clipped", train__lr=0.05, client__mods=["fixedclipping"], client__max_update_norm=0.05))
    clipped = _update_norms(carried)

    assert len(clipped) == 6 and min(free) > 0.05  # without the mod the updates are larger than the bound
    assert all(n <= 0.05 * (1 + 1e-5) for n in clipped), clipped
    assert max(clipped) == pytest.approx(0.05, rel=1e-4)


def test_a_mod_the_job_does_not_name_does_not_run(job_factory, carried):
    run_local(job_factory(train__lr=0.05))

    assert all("clipping_norm" not in msg.content["config"] for msg, _ in carried
               if msg.metadata.message_type == MessageType.TRAIN)
