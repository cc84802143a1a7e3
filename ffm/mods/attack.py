"""Hostile clients: a share of the parties (``client.attackers``, lowest partition ids) poison what they send.

``client.attack`` picks the attack (``client.attack_scale`` its strength):

- ``sign_flip``: reply received - s * (trained - received): the update reversed and scaled;
- ``scale``: received + s * update: the update blown up (a model-replacement attempt);
- ``gaussian``: received + N(0, s^2) per entry: noise instead of training;
- ``label_flip``: trains honestly on its own data with label y read as K - 1 - y (data poisoning; the mod
  marks the train config and the ClientApp flips the labels of its batches).

Seeded by (job seed, round, partition id), so runs repeat. Used to judge robust rules (FedMedian, Krum, ...).
"""

from __future__ import annotations

import math

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from ffm.config import JobConfig
from ffm.strategies.guard import ARRAYS_KEY
from ffm.strategies.offset import round_seed

__all__ = ["FLIP_LABELS_KEY", "attack", "is_attacker"]

FLIP_LABELS_KEY = "flip-labels"


def is_attacker(job: JobConfig, party: int) -> bool:
    return party < math.floor(job.client.attackers * job.federation.num_clients + 1e-9)


def attack(job: JobConfig) -> Mod:
    kind, scale = job.client.attack, job.client.attack_scale

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        party = int(context.node_config.get("partition-id", 0))
        if msg.metadata.message_type != MessageType.TRAIN or not is_attacker(job, party):
            return call_next(msg, context)
        if kind == "label_flip":
            msg.content["config"] = ConfigRecord({**msg.content["config"], FLIP_LABELS_KEY: True})
            return call_next(msg, context)
        received = msg.content[ARRAYS_KEY].to_torch_state_dict()
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        trained = reply.content[ARRAYS_KEY].to_torch_state_dict()
        server_round = int(msg.content["config"]["server-round"])
        generator = torch.Generator().manual_seed(round_seed(job.seed, server_round, salt=9000 + party))
        reply.content[ARRAYS_KEY] = ArrayRecord({name: _poison(kind, scale, received[name], value, generator)
                                                 for name, value in trained.items()})
        return reply

    return mod


def _poison(kind: str, scale: float, received: torch.Tensor, trained: torch.Tensor,
            generator: torch.Generator) -> torch.Tensor:
    if not trained.is_floating_point():
        return trained
    if kind == "sign_flip":
        return received - scale * (trained - received)
    if kind == "scale":
        return received + scale * (trained - received)
    if kind == "gaussian":
        return received + scale * torch.randn(trained.shape, generator=generator, dtype=trained.dtype)
    raise ValueError(f"unknown attack '{kind}'")
