"""Experience replay: each client keeps a bounded sample of its own past stages' examples in its node state.

The buffer is the node's ``Context.state`` (Flower keeps it on the SuperNode across rounds), so it is never
part of any message. When a client enters a new stage it offers every example of the stages it has finished
to a reservoir (Vitter's algorithm R: each example seen so far is kept with the same probability
``size / seen``); each local step then trains on its current batch plus ``replay_batch`` buffered examples.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from ffm.tasks.examples import Examples, batches

__all__ = ["BUFFER_KEY", "META_KEY", "concat", "remember", "replay_batches"]

BUFFER_KEY = "replay"  # node state: the buffered examples' tensors
META_KEY = "replay-meta"  # node state: examples offered so far and the last stage added
_LENGTHS = "__lengths"
_PAD = {"labels": -100}  # right padding of sequence tensors that differ in width (0 elsewhere: masked out)


def concat(a: Examples, b: Examples) -> Examples:
    """``a`` then ``b`` as one Examples; sequence tensors right-padded to the wider of the two."""
    tensors = {}
    for key, left in a.tensors.items():
        right = b.tensors[key]
        if key in a.sequence_keys and left.shape[1] != right.shape[1]:
            width = max(left.shape[1], right.shape[1])
            pad = _PAD.get(key, 0)
            left, right = (torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad) for t in (left, right))
        tensors[key] = torch.cat([left, right])
    return Examples(tensors, torch.cat([a.lengths, b.lengths]), a.sequence_keys)


def _take(data: Examples, index: list[int]) -> Examples:
    idx = torch.tensor(index, dtype=torch.long)
    return Examples({k: v[idx] for k, v in data.tensors.items()}, data.lengths[idx], data.sequence_keys)


def _load(state: RecordDict, like: Examples) -> Examples | None:
    if BUFFER_KEY not in state.array_records:
        return None
    saved = state[BUFFER_KEY].to_torch_state_dict()
    lengths = saved.pop(_LENGTHS)
    return Examples(saved, lengths, like.sequence_keys)


def remember(state: RecordDict, finished: list[tuple[int, Examples]], size: int, seed: int) -> Examples | None:
    """Offer the examples of each finished ``(stage, examples)`` not offered yet to the node's reservoir of
    ``size``; return the buffer (None while the node has finished no stage)."""
    meta = state[META_KEY] if META_KEY in state.metric_records else MetricRecord({"seen": 0, "stage": -1})
    seen, last = int(meta["seen"]), int(meta["stage"])
    new = [(stage, data) for stage, data in finished if stage > last]
    if not new:
        return _load(state, finished[0][1]) if finished else None
    pool = _load(state, new[0][1])
    slots = list(range(len(pool))) if pool is not None else []  # indices into the pool (old buffer + new examples)
    rng = random.Random(seed)
    for _, data in new:
        start = len(pool) if pool is not None else 0
        pool = data if pool is None else concat(pool, data)
        for i in range(len(data)):
            if len(slots) < size:
                slots.append(start + i)
            else:
                j = rng.randrange(seen + 1)
                if j < size:
                    slots[j] = start + i
            seen += 1
    buffer = _take(pool, slots)
    state[BUFFER_KEY] = ArrayRecord({**buffer.tensors, _LENGTHS: buffer.lengths})
    state[META_KEY] = MetricRecord({"seen": seen, "stage": max(stage for stage, _ in new)})
    return buffer


def replay_batches(data: Examples, buffer: Examples, batch_size: int, replay_batch: int, steps: int,
                   generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """Exactly ``steps`` batches: ``batch_size`` shuffled current examples plus ``replay_batch`` drawn from the
    buffer (without replacement within a step)."""
    union = concat(data, buffer)
    n, m = len(data), len(buffer)
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            current = order[start : start + batch_size]
            past = n + torch.randperm(m, generator=generator)[:replay_batch]
            chosen = torch.cat([current, past])
            yield next(batches(union, len(chosen), chosen))
            done += 1
            if done == steps:
                return
