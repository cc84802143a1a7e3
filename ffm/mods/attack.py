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
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from ffm.keys import ARRAYS_KEY, CONFIG_KEY, PARTITION_ID, SERVER_ROUND, Salt, derive_seed
from ffm.mods.spec import ModSpec
from ffm.settings import Job, option, require

__all__ = ["ATTACK", "AttackConfig", "FLIP_LABELS_KEY", "attack", "is_attacker"]

FLIP_LABELS_KEY = "flip-labels"  # in a train message's config: this client poisons its labels


@dataclass
class AttackConfig:
    """What mod 'attack' sends, and which share of the clients runs it."""

    attack: str = option("sign_flip", "what attackers send (mod 'attack')", choices=("sign_flip", "scale", "gaussian",
                                                                                      "label_flip"))
    attackers: float = option(0.2, "share of the clients that attack, the lowest partition ids (mod 'attack')")
    attack_scale: float = option(
        10.0, "attack strength: the update's factor (sign_flip: -scale, scale), or the noise std (gaussian)"
    )

    def __post_init__(self) -> None:
        require(0.0 <= self.attackers <= 1.0, f"client.attackers must be in [0, 1], got {self.attackers}")


def is_attacker(job: Job, party: int) -> bool:
    """Whether partition ``party`` is among the lowest ``client.attackers`` share of the partition ids."""
    return party < math.floor(job.client.attackers * job.federation.num_clients + 1e-9)


def attack(job: Job) -> Mod:
    """The mod: an attacker's train reply poisoned as ``client.attack`` says; everyone else untouched."""
    kind, scale = job.client.attack, job.client.attack_scale

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        party = int(context.node_config.get(PARTITION_ID, 0))
        if msg.metadata.message_type != MessageType.TRAIN or not is_attacker(job, party):
            return call_next(msg, context)
        if kind == "label_flip":
            msg.content[CONFIG_KEY] = ConfigRecord({**msg.content[CONFIG_KEY], FLIP_LABELS_KEY: True})
            return call_next(msg, context)
        received = msg.content[ARRAYS_KEY].to_torch_state_dict()
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        trained = reply.content[ARRAYS_KEY].to_torch_state_dict()
        server_round = int(msg.content[CONFIG_KEY][SERVER_ROUND])
        generator = torch.Generator().manual_seed(derive_seed(job.seed, server_round, Salt.ATTACK, party))
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


ATTACK = ModSpec(attack, config=AttackConfig)
