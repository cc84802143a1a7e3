"""A toy client mod: each node counts the train messages it has answered (in its node state) and reports the
count, starting from ``client.toy_counter_start``."""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Context, Message, MessageType, MetricRecord
from flwr.clientapp.typing import ClientAppCallable, Mod

from ffm.keys import METRICS_KEY
from ffm.mods import ModSpec
from ffm.settings import Job, option


@dataclass
class CounterConfig:
    toy_counter_start: int = option(100, "mod 'toy_counter': the count before the first message")


def counter(job: Job) -> Mod:
    start = job.client.toy_counter_start

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        seen = int(context.state["toy-count"]["n"]) if "toy-count" in context.state.metric_records else start
        context.state["toy-count"] = MetricRecord({"n": seen + 1})
        reply.content[METRICS_KEY] = MetricRecord({**reply.content[METRICS_KEY], "toy-count": seen + 1})
        return reply

    return mod


COUNTER = ModSpec(counter, config=CounterConfig)
