"""What the ServerApp may ask of the runtime that carries its messages, beyond Flower's Grid API.

The ServerApp, its strategies and the ClientApp speak Flower's Grid API only. A few services depend on where
the nodes live: saving and restoring the nodes' own state with a checkpoint, reading each party's personal
part for the final evaluation, knowing which partition each node serves, and handing train replies over one
at a time. :class:`Carrier` names them. ffm's in-process LocalGrid implements it (its nodes live in this
process); on a Flower federation :class:`FederationCarrier` implements it over the Grid API alone (each
SuperNode keeps its own state; a node's partition is asked with a QUERY message). The ServerApp gets one
from :func:`carrier_for` and never probes a Grid's attributes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from ffm.keys import CLIENT_KEY, CONFIG_KEY, PARTITION_ID

__all__ = ["Carrier", "FederationCarrier", "carrier_for"]


class Carrier(ABC):
    """The runtime services the ServerApp uses (see the module docstring)."""

    @abstractmethod
    def node_states(self) -> dict[int, dict[str, Any]]:
        """Every node's own state (``Context.state``) as plain tensors and values, for a checkpoint; empty where
        the nodes keep it themselves."""

    @abstractmethod
    def load_node_states(self, states: dict[int, dict[str, Any]]) -> None:
        """Restore what :meth:`node_states` saved (a resumed simulation continues with the nodes' state)."""

    @abstractmethod
    def personal_states(self) -> dict[int, dict[str, torch.Tensor]]:
        """Each party's personal part (``method.personal``) by partition id, where the server may read it (to
        measure what personalization buys); empty where it never leaves the node."""

    @abstractmethod
    def partition_ids(self, grid: Grid) -> dict[int, int]:
        """Node id -> partition id of every node ``grid`` reaches."""

    @abstractmethod
    def stream_replies(self, on: bool) -> None:
        """Hand train replies to the strategy one by one as they arrive (streaming aggregation), where the
        runtime can; a runtime that cannot simply delivers them together."""


class FederationCarrier(Carrier):
    """The services on a Flower federation: the Grid API only, since every node lives on its own machine."""

    def node_states(self) -> dict[int, dict[str, Any]]:
        return {}

    def load_node_states(self, states: dict[int, dict[str, Any]]) -> None:
        """Nothing to restore here: each SuperNode keeps its own state."""

    def personal_states(self) -> dict[int, dict[str, torch.Tensor]]:
        return {}

    def partition_ids(self, grid: Grid) -> dict[int, int]:
        asks = [Message(RecordDict({CONFIG_KEY: ConfigRecord({})}), dst_node_id=node,
                        message_type=MessageType.QUERY, group_id="partition-ids") for node in grid.get_node_ids()]
        return {reply.metadata.src_node_id: int(reply.content[CLIENT_KEY][PARTITION_ID])
                for reply in grid.send_and_receive(asks) if not reply.has_error()}

    def stream_replies(self, on: bool) -> None:
        """Flower's Grid delivers a round's replies together; the running mean still folds them one by one."""


def carrier_for(grid: Grid) -> Carrier:
    """The grid itself when it implements :class:`Carrier` (the LocalGrid), else the Grid-API-only services."""
    return grid if isinstance(grid, Carrier) else FederationCarrier()
