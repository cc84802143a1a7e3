"""A node's own state on its own disk: what a client keeps between rounds survives a restart of its SuperNode.

Everything a client keeps between rounds lives in Flower's node state (``Context.state``): personal parts,
SCAFFOLD's control variate, the continual replay buffer and EWC's Fisher, compression's error-feedback
residual, the persistent optimizer's moments, DP-SGD's step count. flwr 1.42's SuperNode holds it in memory
only, and a resumed run is a new Flower run with an empty one. So with a ``state-dir`` in its node config
(``ffm deploy supernode`` sets one beside the data folder) the :func:`keep_node_state` mod writes the state to
``STATE_DIR/run-<id>.pt`` after every round the node trains, atomically, and reads it back when a message
finds the node without it. It is never sent anywhere, and records that live for one round only (names starting
``round-``: secure aggregation's secrets) are never written.

The file is keyed by the ffm run (the ``ffm-run`` id the ServerApp sends in every train and evaluate config,
the same after ``--resume``), not by Flower's run id, and holds the node's last two snapshots: a round
replayed after the server resumed starts from the state before it, so with the same replies a resumed run
ends bit-identical. Records that count what has been spent (:data:`LEDGER_KEYS`: DP-SGD's steps) are never
rolled back: a replayed round's data was used twice, and both count. A file written for another run or
another partition is refused with one line naming it; an unreadable one is moved aside and the node goes on
as one that lost its state, which the ClientApp must handle conservatively (:func:`state_was_lost`).

The LocalGrid's checkpoints store node states in the same packed form (:func:`pack`, :func:`unpack`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from ffm.errors import FfmError
from ffm.keys import CONFIG_KEY, DP_SGD_KEY, EPHEMERAL_PREFIX, PARTITION_ID, RUN_ID_KEY, SERVER_ROUND

__all__ = ["LEDGER_KEYS", "NodeStateError", "NodeStateFile", "STATE_DIR", "keep_node_state", "pack",
           "state_was_lost", "unpack"]

logger = logging.getLogger("ffm")

STATE_DIR = "state-dir"  # a node config key: the folder of this node's state files (on its own disk)
FORMAT = "ffm-node-state/1"
TAG_KEY = "ffm-node-state"  # in Context.state: which run and round the state in memory reflects, or what was lost
LEDGER_KEYS = (DP_SGD_KEY,)  # records that count what has been spent: restored from the newest save, never older
KEEP = 2  # snapshots kept: the last round trained and the one before (a replayed round starts from it)


class NodeStateError(FfmError):
    """The node refuses to train on its saved state: a file of another run or partition, or a lost privacy count
    it must not assume (``privacy.sgd_lost_count=refuse``)."""


def pack(records: RecordDict) -> dict[str, Any]:
    """A RecordDict as plain tensors and values (what torch.save writes; the LocalGrid's checkpoints too)."""
    out: dict[str, Any] = {}
    for key, record in records.items():
        if isinstance(record, ArrayRecord):
            out[key] = {"kind": "arrays", "items": record.to_torch_state_dict()}
        else:
            out[key] = {"kind": type(record).__name__, "items": dict(record)}
    return out


def unpack(packed: dict[str, Any]) -> RecordDict:
    """The RecordDict :func:`pack` wrote."""
    kinds = {"ConfigRecord": ConfigRecord, "MetricRecord": MetricRecord}
    return RecordDict({key: ArrayRecord(value["items"]) if value["kind"] == "arrays"
                       else kinds[value["kind"]](value["items"]) for key, value in packed.items()})


@dataclass(frozen=True)
class NodeStateFile:
    """One node's state file for one run: ``directory/run-<run>.pt``."""

    directory: Path
    run: str
    partition: int

    @property
    def path(self) -> Path:
        return self.directory / f"run-{self.run}.pt"

    def read(self) -> dict[str, Any] | None:
        """The file's contents, or None when there is none. Raises NodeStateError for another run's or another
        partition's file; an unreadable file is moved aside (``.unreadable``) and reads as None."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, weights_only=True)
            if not isinstance(saved, dict) or saved.get("format") != FORMAT:
                raise ValueError(f"not an {FORMAT} file")
        except Exception as exc:  # a torn or foreign file: keep it for inspection, never train on it
            aside = self.path.with_name(self.path.name + ".unreadable")
            os.replace(self.path, aside)
            logger.error("ffm node: state file %s is unreadable (%s): moved to %s; going on as a node that lost "
                         "its state", self.path, exc, aside)
            return None
        if saved.get("run") != self.run or int(saved.get("partition", -1)) != self.partition:
            raise NodeStateError(
                f"node state file {self.path} belongs to run {saved.get('run')} partition {saved.get('partition')}, "
                f"not run {self.run} partition {self.partition}: give each node its own --state-dir, or move the "
                "file away if this node's partition changed")
        return saved

    def write(self, snapshots: dict[int, dict[str, Any]], ledgers: dict[str, Any]) -> None:
        """Replace the file atomically (a crash leaves the old file or the new one, never a torn one)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "run": self.run, "partition": self.partition, "written": time.time(),
                   "snapshots": snapshots, "ledgers": ledgers}
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(payload, tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def _tag(context: Context) -> dict[str, Any]:
    return dict(context.state.config_records[TAG_KEY]) if TAG_KEY in context.state.config_records else {}


def state_was_lost(context: Context) -> str:
    """Why this node's state for the run is missing though the run is past its first round ('' when it is not):
    no file, or an unreadable one. The node may simply not have trained before (a sampled federation); code
    that accounts for spending (DP-SGD's steps) must assume it did."""
    return str(_tag(context).get("lost", ""))


def _restore(context: Context, store: NodeStateFile, server_round: int, training: bool) -> None:
    """Make ``context.state`` the state this message must start from, unless memory already holds it."""
    tag = _tag(context)
    newest_usable = server_round - 1 if training else server_round  # a train message starts from before its round
    if tag.get("run") == store.run and int(tag.get("round", 0)) <= newest_usable:
        return  # memory holds this run's state from before this message: the common case, no disk read
    saved = store.read()
    if saved is None:
        lost = f"no readable node state file {store.path} at round {server_round}" if server_round > 1 else ""
        kept = {k: v for k, v in context.state.items() if k.startswith(EPHEMERAL_PREFIX)}
        context.state = RecordDict({**kept, TAG_KEY: ConfigRecord({"run": store.run, "round": 0, "lost": lost})})
        if lost:
            logger.warning("ffm node: %s: starting from an empty state", lost)
        return
    rounds = sorted(r for r in saved["snapshots"] if r <= newest_usable)
    # what this round's mods already keep in memory (secure aggregation's secrets of the round) stays
    state = RecordDict({k: v for k, v in context.state.items() if k.startswith(EPHEMERAL_PREFIX)})
    if rounds:
        for key, record in unpack(saved["snapshots"][rounds[-1]]).items():
            state[key] = record
    for key, packed in saved["ledgers"].items():  # the newest count, also when the snapshot is older
        state[key] = unpack({key: packed})[key]
    state[TAG_KEY] = ConfigRecord({"run": store.run, "round": rounds[-1] if rounds else 0, "lost": ""})
    context.state = state
    logger.info("ffm node: restored the node state of round %s from %s", rounds[-1] if rounds else "-", store.path)


def _save(context: Context, store: NodeStateFile, server_round: int) -> None:
    saved = store.read() or {"snapshots": {}, "ledgers": {}}
    snapshot = pack(RecordDict({k: v for k, v in context.state.items()
                                if k != TAG_KEY and not k.startswith(EPHEMERAL_PREFIX)}))  # no secret on disk
    ledgers = {key: value for key, value in snapshot.items() if key in LEDGER_KEYS}
    snapshots = {r: s for r, s in saved["snapshots"].items() if r < server_round} | {server_round: snapshot}
    store.write({r: snapshots[r] for r in sorted(snapshots)[-KEEP:]}, ledgers)
    context.state[TAG_KEY] = ConfigRecord({"run": store.run, "round": server_round, "lost": ""})


def keep_node_state(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: restore the node's state for this run from its own disk when memory lacks it, and write it
    after every round the node trains (see the module docstring). A node without ``state-dir`` in its node
    config, or a message without an ffm run id (a query), passes through."""
    directory = context.node_config.get(STATE_DIR)
    config = msg.content.config_records.get(CONFIG_KEY)
    if not directory or config is None or RUN_ID_KEY not in config:
        return call_next(msg, context)
    store = NodeStateFile(Path(str(directory)), str(config[RUN_ID_KEY]),
                          int(context.node_config.get(PARTITION_ID, 0)))
    server_round = int(config.get(SERVER_ROUND, 0))
    training = msg.metadata.message_type == MessageType.TRAIN
    _restore(context, store, server_round, training)
    reply = call_next(msg, context)
    if training and not reply.has_error():
        _save(context, store, server_round)
    return reply
