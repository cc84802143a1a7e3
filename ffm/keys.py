"""The names ffm's messages and node states use, and every seed derived from the job's seed.

Record keys are the wire format between the ServerApp, the ClientApp and the mods: defined here once, so a
mod, a strategy and the client agree without importing each other. Seeds: every random choice of a run
(sampling, shuffling, dropouts, attacks, noise, compression's rounding) is drawn from a generator seeded by
:func:`derive_seed` from (job seed, round, what it is for, which party). Nothing depends on what ran before,
so a resumed run draws exactly what an uninterrupted one would. Each use has its own named :class:`Salt`;
salts that take a party id are 2,000 apart, so two uses never share a seed with fewer than 2,000 parties.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ARRAYS_KEY",
    "BASE_DELTA_PREFIX",
    "CLIENT_KEY",
    "CONFIG_KEY",
    "DP_SGD_KEY",
    "EPHEMERAL_PREFIX",
    "METRICS_KEY",
    "OPTIMIZER_KEY",
    "PARTITION_ID",
    "PERSONAL_KEY",
    "RUN_ID_KEY",
    "SERVER_ROUND",
    "Salt",
    "derive_seed",
    "is_base_delta",
]

ARRAYS_KEY = "arrays"  # the travelling trainable state (Flower's default arrayrecord_key)
METRICS_KEY = "metrics"  # a reply's MetricRecord (num-examples, train-loss, ...)
CONFIG_KEY = "config"  # a message's ConfigRecord (server-round, a strategy's keys)
CLIENT_KEY = "client"  # a reply's ConfigRecord that says which data owner answered (partition-id)
PERSONAL_KEY = "personal"  # node state: the parameters that never leave their client (method.personal)
OPTIMIZER_KEY = "optimizer"  # node state: the local optimizer's state (train.persistent_optimizer)
DP_SGD_KEY = "dp-sgd"  # node state: the node's count of its DP-SGD steps (its own privacy accounting)
EPHEMERAL_PREFIX = "round-"  # node-state records that live for one round (secure aggregation's secrets): kept off disk
RUN_ID_KEY = "ffm-run"  # in CONFIG_KEY: which ffm run a message belongs to (the same after a resume)
SERVER_ROUND = "server-round"  # in CONFIG_KEY: the true round number (after a resume too)
PARTITION_ID = "partition-id"  # in a node's config and in CLIENT_KEY: which data owner it is
BASE_DELTA_PREFIX = "base-delta:"  # state entries added to a frozen base weight (exact LoRA aggregation)


def is_base_delta(name: str) -> bool:
    """Whether a state entry is a frozen base weight's delta, which travels down only."""
    return name.startswith(BASE_DELTA_PREFIX)


class Salt(IntEnum):
    """What a derived seed is for. The numbers are part of every run's results: never change one."""

    TRAIN_SAMPLING = 1  # which clients a round trains (Flower samples with the global `random`)
    EVALUATE_SAMPLING = 2  # which clients a round evaluates
    AGGREGATION_NOISE = 3  # Flower's DP wrappers draw their noise from the global numpy generator
    CONTINUAL_STAGE = 7  # replay mixing and EWC's Fisher samples (seeded from a client's round seed)
    POISSON_SAMPLING = 8  # which clients a round trains under federation.sampling=poisson
    LOCAL_TRAINING = 1_000  # + party: a client's shuffling, dropout layers, masks and DP-SGD noise
    REPLAY_BUFFER = 5_000  # + party: which past examples a client keeps
    DROPOUT = 7_000  # + party: whether a client drops out of a round (mod 'dropout')
    ATTACK = 9_000  # + party: an attacker's noise (mod 'attack')
    COMPRESSION = 11_000  # + party: stochastic rounding of a compressed update
    CANARY = 13_000  # + canary: whether an audit's canary client is present, and its direction


def derive_seed(seed: int, server_round: int, salt: Salt, party: int = 0) -> int:
    """A seed for one use in one round (and one party), independent of what ran before it."""
    return (seed * 1_000_003 + server_round * 10_007 + int(salt) + party) % (2**31 - 1)
