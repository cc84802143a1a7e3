"""The ``continual`` section: the kind of stream, its stages, and what keeps the model from forgetting."""

from __future__ import annotations

from dataclasses import dataclass

from ffm.data.stream import STREAMS
from ffm.settings import items, option, require

__all__ = ["APPROACHES", "ContinualConfig"]

APPROACHES = ("naive", "replay", "ewc", "adapters", "joint")


@dataclass
class ContinualConfig:
    """A stream of stages: which data arrives when, which parties take part, and the approach to forgetting."""

    kind: str = option("none", "continual learning: none, class_incremental (classes arrive a few at a time; the "
                       "head grows), domain_incremental (same labels, new data: continual.sources, or data.source "
                       "cut in order)", choices=lambda: STREAMS.names())
    stages: int = option(3, "stages of the stream; federation.rounds is split evenly across them (a multiple of "
                         "this)")
    classes: list[str] = items("class_incremental: the label names of each stage, | between names (e.g. "
                               "business|tech,sports|politics,entertainment); empty = label order cut into `stages` "
                               "groups")
    sources: list[str] = items("domain_incremental: one data.source per stage (labels matched by name, see "
                               "label_map); empty = data.source cut into `stages` consecutive parts in its own order")
    label_map: list[str] = items("domain_incremental: from=to renames of a later source's labels onto the first "
                                 "source's (e.g. World=politics); examples whose label matches none are dropped")
    parties: list[str] = items("party churn: the partition ids that take part in each stage, as ranges joined by | "
                               "(e.g. 0-5,0-7,3-9); empty = every party in every stage")
    approach: str = option("naive", "naive (fine-tune on, forgets), replay (a bounded buffer of own past examples in "
                           "the node state), ewc (Fisher penalty), adapters (a fresh adapter per stage, routed by "
                           "stage at evaluation), joint (upper bound: every stage's data from the start)",
                           choices=APPROACHES)
    replay_size: int = option(64, "replay: examples each client keeps of its past stages (reservoir sampling)")
    replay_batch: int = option(0, "replay: buffered examples added to each local batch (0 = train.batch_size)")
    ewc_lambda: float = option(100.0, "ewc: weight of the penalty (lambda / 2) * sum F (theta - theta*)^2")
    ewc_samples: int = option(64, "ewc: examples of the finished stage a client computes its diagonal Fisher on")

    def __post_init__(self) -> None:
        require(self.replay_size >= 1 and self.replay_batch >= 0 and self.ewc_lambda >= 0 and self.ewc_samples >= 1,
                "continual.replay_size and continual.ewc_samples must be >= 1, replay_batch and ewc_lambda >= 0")
        if self.kind == "none":
            return
        require(self.stages >= 2, f"continual.stages must be at least 2, got {self.stages}")
        for key in ("classes", "sources", "parties"):
            given = getattr(self, key)
            require(not given or len(given) == self.stages,
                    f"continual.{key} names {len(given)} stages but continual.stages={self.stages}")
        require(self.kind == "class_incremental" or not self.classes, "continual.classes is for kind=class_incremental")
        require(self.kind == "domain_incremental" or not (self.sources or self.label_map),
                "continual.sources and continual.label_map are for kind=domain_incremental")
