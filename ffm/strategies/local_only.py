"""Local-only training, the no-collaboration baseline: every client trains alone, nothing is averaged.

Each node always receives its own latest state back (the shared initial state in round 1), so the same
ClientApp, Grid and budget of local steps serve the baseline as serve the federation. States are kept by
*partition id* (which data owner), not node id: node ids are random on a real federation and change when
a SuperNode restarts. A node's partition id arrives with each reply; after a resume the strategy asks the
nodes it does not know yet with a QUERY message (a reply without tensors).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from ffm.keys import ARRAYS_KEY, CLIENT_KEY, CONFIG_KEY, PARTITION_ID, SERVER_ROUND

__all__ = ["LocalOnly"]


def _partition(msg: Message) -> int:
    return int(msg.content[CLIENT_KEY][PARTITION_ID])


class LocalOnly(Strategy):
    """Keep one state per partition; send it back to that partition's node every round; never aggregate."""

    def __init__(self) -> None:
        self.states: dict[int, ArrayRecord] = {}
        self.partition_of: dict[int, int] = {}  # node id -> partition id, learned from replies

    def _learn_partitions(self, nodes: list[int], grid: Grid, server_round: int) -> None:
        unknown = [node for node in nodes if node not in self.partition_of]
        if not unknown or not self.states:
            return  # nobody unknown, or nobody has a state of its own yet (everyone starts from `arrays`)
        asks = [
            Message(RecordDict({CONFIG_KEY: ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY,
                    group_id=str(server_round))
            for node in unknown
        ]
        for reply in grid.send_and_receive(asks):
            if not reply.has_error():
                self.partition_of[reply.metadata.src_node_id] = _partition(reply)

    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, kind: str
    ) -> list[Message]:
        config[SERVER_ROUND] = server_round
        nodes = sorted(grid.get_node_ids())
        self._learn_partitions(nodes, grid, server_round)
        return [
            Message(
                RecordDict({ARRAYS_KEY: self.states.get(self.partition_of.get(node, -1), arrays), CONFIG_KEY: config}),
                dst_node_id=node,
                message_type=kind,
                group_id=str(server_round),
            )
            for node in nodes
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, grid, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contents = []
        for msg in replies:
            if msg.has_error():
                continue
            self.partition_of[msg.metadata.src_node_id] = _partition(msg)
            self.states[_partition(msg)] = msg.content[ARRAYS_KEY]
            contents.append(msg.content)
        return None, aggregate_metricrecords(contents, "num-examples") if contents else None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, grid, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        contents = [msg.content for msg in replies if not msg.has_error()]
        return aggregate_metricrecords(contents, "num-examples") if contents else None

    @property
    def party_states(self) -> dict[int, ArrayRecord]:
        """Each party's own model, by partition id (the server evaluates and saves each)."""
        return self.states

    def summary(self) -> None:
        """Nothing to configure: the baseline has no parameters."""

    def state_dict(self) -> dict[str, dict]:
        """Every party's own model, for the checkpoint."""
        return {"states": {pid: arrays.to_torch_state_dict() for pid, arrays in self.states.items()}}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.states = {int(pid): ArrayRecord(sd) for pid, sd in state.get("states", {}).items()}
