"""A continual stream: the job's data cut into stages, each split across the same parties.

Stage ``s`` gives every party new private data (disjoint by stage and by party) and keeps its own held-out
test set, so the model can be evaluated on every stage after every stage. Class-incremental streams renumber
the labels so that each stage's classes follow the earlier ones (the head grows by appending rows);
domain-incremental streams keep one label space over new sources, or cut one source in its own order (Tiny
Shakespeare's plays arrive one after another). Each stage is split by :func:`ffm.data.split_federated` with
the job's partitioner and a seed of its own.
"""

from __future__ import annotations

import dataclasses
import logging

import datasets

from ffm.data import PARTITIONERS, FederatedData, load_source, split_federated
from ffm.data.partition import ClientData, _stratified_split
from ffm.errors import ConfigError, DataError
from ffm.settings import Job

__all__ = ["active_parties", "class_groups", "joint_data", "parse_parties", "split_stream", "stage_classes",
           "stage_index", "stage_of", "stage_rounds"]

logger = logging.getLogger("ffm")


def stage_rounds(job: Job) -> int:
    """Rounds each stage trains."""
    return job.federation.rounds // job.continual.stages


def stage_index(job: Job, server_round: int) -> int:
    """The stage round ``server_round`` falls in (round 0, before any training, in stage 0)."""
    return min((max(server_round, 1) - 1) // stage_rounds(job), job.continual.stages - 1)


def stage_of(job: Job, server_round: int) -> int | None:
    """The stage whose data round ``server_round`` trains on; None when the job has no stages to follow
    (not continual, or the joint upper bound, which trains on every stage's data from the start)."""
    c = job.continual
    if c.kind == "none" or c.approach == "joint":
        return None
    return stage_index(job, server_round)


def parse_parties(text: str, num_parties: int) -> list[int]:
    """The partition ids that ``text`` (ranges joined by |, e.g. 0-5|8) names; a ConfigError names a bad one."""
    ids: set[int] = set()
    for part in text.split("|"):
        low, sep, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high) if sep else int(low)
        except ValueError:
            raise ConfigError(f"continual.parties: '{text}' is not ranges of partition ids joined by | "
                              "(e.g. 0-5|8)") from None
        if not 0 <= first <= last < num_parties:
            raise ConfigError(f"continual.parties: '{part}' is outside the partition ids 0..{num_parties - 1}")
        ids.update(range(first, last + 1))
    return sorted(ids)


def active_parties(job: Job, stage: int | None) -> list[int]:
    """Partition ids that take part in ``stage`` (every party when the stream has no churn)."""
    everyone = list(range(job.federation.num_clients))
    parties = job.continual.parties
    if not parties or stage is None:
        return everyone
    return parse_parties(parties[stage], job.federation.num_clients)


def class_groups(job: Job, label_names: list[str]) -> list[list[str]]:
    """The label names of each stage: ``continual.classes``, or the label order cut into ``stages`` groups."""
    c = job.continual
    if not c.classes:
        n, k = len(label_names), c.stages
        if n < k:
            raise DataError(f"continual.stages={k} needs at least {k} classes; the data has {n} ({label_names})")
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [label_names[bounds[i]:bounds[i + 1]] for i in range(k)]
    groups = [[name.strip() for name in text.split("|") if name.strip()] for text in c.classes]
    named = [name for group in groups for name in group]
    unknown = [name for name in named if name not in label_names]
    if unknown:
        raise ConfigError(f"continual.classes names {unknown}, which are not labels of the data ({label_names})")
    if len(set(named)) != len(named):
        raise ConfigError("continual.classes names a class in more than one stage; each class arrives once")
    return groups


def stage_classes(job: Job, label_names: list[str]) -> list[int]:
    """Classes seen after each stage of a class-incremental stream (the head's rows then)."""
    sizes = [len(group) for group in class_groups(job, label_names)]
    return [sum(sizes[: k + 1]) for k in range(len(sizes))]


def _relabel(ds: datasets.Dataset, names: list[str], mapping: dict[int, int]) -> datasets.Dataset:
    """Keep the examples whose label is in ``mapping``; renumber them; the label feature gets ``names``."""
    keep = [i for i, label in enumerate(ds["label"]) if label in mapping]
    ds = ds.select(keep)
    features = ds.features.copy()
    features["label"] = datasets.ClassLabel(names=names)
    return ds.map(lambda row: {"label": mapping[row["label"]]}, features=features)


def _class_incremental(ds: datasets.Dataset, job: Job) -> list[tuple[datasets.Dataset, list[str]]]:
    names = ds.features["label"].names
    groups = class_groups(job, names)
    order = [name for group in groups for name in group]
    relabelled = _relabel(ds, order, {names.index(name): i for i, name in enumerate(order)})
    stages, first = [], 0
    for group in groups:
        ids = set(range(first, first + len(group)))
        stages.append((relabelled.filter(lambda row, ids=ids: row["label"] in ids), order))
        first += len(group)
    return stages


def _aligned(ds: datasets.Dataset, names: list[str], label_map: dict[str, str], source: str) -> datasets.Dataset:
    """A later source's examples on the first source's labels: by name (case-insensitive) or ``label_map``."""
    lower = {name.lower(): i for i, name in enumerate(names)}
    mapping = {}
    for i, name in enumerate(ds.features["label"].names):
        target = label_map.get(name, name).lower()
        if target in lower:
            mapping[i] = lower[target]
    if not mapping:
        raise DataError(f"continual.sources: no label of '{source}' ({ds.features['label'].names}) matches the "
                        f"first source's ({names}); map them with continual.label_map=from=to")
    dropped = len(ds) - sum(1 for label in ds["label"] if label in mapping)
    if dropped:
        logger.info("continual: %d examples of %s have no label in %s and are dropped", dropped, source, names)
    return _relabel(ds, names, mapping)


def _domain_incremental(ds: datasets.Dataset, job: Job) -> list[tuple[datasets.Dataset, list[str]]]:
    c = job.continual
    names = ds.features["label"].names if "label" in ds.column_names else []
    if not c.sources:  # one source, cut in its own order (no shuffle: the order is the stream)
        k = c.stages
        bounds = [round(i * len(ds) / k) for i in range(k + 1)]
        return [(ds.select(range(bounds[i], bounds[i + 1])), names) for i in range(k)]
    label_map = {}
    for item in c.label_map:
        old, sep, new = item.partition("=")
        if not sep:
            raise ConfigError(f"continual.label_map: '{item}' is not of the form from=to (e.g. World=politics)")
        label_map[old.strip()] = new.strip()
    stages = []
    for k, source in enumerate(c.sources):
        part = load_source(dataclasses.replace(job.data, source=source))
        if k == 0:
            names = part.features["label"].names if "label" in part.column_names else []
            if not names and len(set(c.sources)) > 1:
                raise DataError(f"continual.sources: '{source}' has no labels to align the other sources to")
        elif names:
            part = _aligned(part, names, label_map, source)
        stages.append((part, names))
    return stages


def _capped(ds: datasets.Dataset, count: int, seed: int) -> datasets.Dataset:
    """A stratified subset of ``count`` examples (all when ``count`` is 0 or more than there are)."""
    if not count or count >= len(ds):
        return ds
    if "label" in ds.column_names:
        return _stratified_split(ds, seed, train_size=count)["train"]
    return ds.select(range(count))  # an unlabelled stream keeps its order


def split_stream(ds: datasets.Dataset, job: Job) -> list[FederatedData]:
    """Each stage's data, split into a test set and the parties' (train, val) by the job's partitioner."""
    sources = job.continual.kind == "domain_incremental" and job.continual.sources
    if not sources:  # data.max_examples is of the whole stream: the one source here, each source's share below
        ds = _capped(ds, job.data.max_examples, job.seed)
    cfg = dataclasses.replace(job.data, max_examples=0)
    if job.continual.kind == "class_incremental":
        if "label" not in ds.column_names:
            raise DataError("continual.kind=class_incremental needs labelled data (a 'label' column)")
        parts = _class_incremental(ds, job)
    else:
        parts = _domain_incremental(ds, job)
    stages = []
    for k, (part, names) in enumerate(parts):
        part = _capped(part, job.data.max_examples // job.continual.stages, job.seed) if sources else part
        if len(part) == 0:
            raise DataError(f"continual stage {k} holds no examples; check continual.classes / continual.sources")
        try:
            data = split_federated(part, cfg, job.federation.num_clients, job.seed * 1_000 + k)
        except DataError as exc:
            hint = ""
            if PARTITIONERS[job.data.partitioner].by_label and len(set(part["label"])) < 2:
                hint = (f" (stage {k} holds one class, which data.partitioner={job.data.partitioner} cannot skew: "
                        "use data.partitioner=iid or quantity, or give every stage two classes)")
            raise DataError(f"continual stage {k} ({len(part)} examples): {exc}{hint}") from None
        stages.append(dataclasses.replace(data, label_names=list(names)))
    return stages


def joint_data(stages: list[FederatedData]) -> FederatedData:
    """Every stage at once: each party's data over all stages, and the union of the test sets."""
    def union(parts: list[datasets.Dataset]) -> datasets.Dataset:
        return datasets.concatenate_datasets(parts)

    def party(parts: list[ClientData]) -> ClientData:
        return ClientData(train=union([c.train for c in parts]), val=union([c.val for c in parts]))

    clients = [party([s.clients[p] for s in stages]) for p in range(len(stages[0].clients))]
    unseen = [party([s.unseen[p] for s in stages]) for p in range(len(stages[0].unseen))]
    return FederatedData(test=union([s.test for s in stages]), clients=clients,
                         label_names=stages[-1].label_names, unseen=unseen)
