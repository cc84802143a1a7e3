"""Local-only training, the no-collaboration baseline: every client trains alone, nothing is averaged.

Each node always receives its own latest state back (the shared initial state in round 1), so the same
ClientApp, Grid and budget of local steps serve the baseline as serve the federation.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

__all__ = ["LocalOnly"]


class LocalOnly(Strategy):
    """Keep one state per node; send it back to that node every round; never aggregate."""

    def __init__(self) -> None:
        self.states: dict[int, ArrayRecord] = {}

    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, kind: str
    ) -> list[Message]:
        config["server-round"] = server_round
        return [
            Message(
                RecordDict({"arrays": self.states.get(node, arrays), "config": config}),
                dst_node_id=node,
                message_type=kind,
                group_id=str(server_round),
            )
            for node in sorted(grid.get_node_ids())
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
            self.states[msg.metadata.src_node_id] = next(iter(msg.content.array_records.values()))
            contents.append(msg.content)
        return None, aggregate_metricrecords(contents, "num-examples") if contents else None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, grid, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        contents = [msg.content for msg in replies if not msg.has_error()]
        return aggregate_metricrecords(contents, "num-examples") if contents else None

    def summary(self) -> None:
        """Nothing to configure: the baseline has no parameters."""

    def state_dict(self) -> dict[int, dict]:
        return {node: arrays.to_torch_state_dict() for node, arrays in self.states.items()}

    def load_state_dict(self, state: dict[int, dict]) -> None:
        self.states = {int(node): ArrayRecord(sd) for node, sd in state.items()}
