"""Discrete prompt selection from private scores (``mode=prompt_search``): no tensor ever travels.

Each round the server proposes candidate prompts (template x label words: a text template around the
article for a decoder with a verbalizer, or a caption template and class names for a CLIP-style model);
every sampled client scores each candidate zero-shot with the frozen model on its own data and replies with
one number per candidate; the server averages the scores (weighted by examples, or uniformly plus Gaussian
noise for client-level DP) and keeps the best. Rounds after the first propose *edits* of the best so far
(another ending after the text, another first line, another candidate's template or words, one class's word
taken from another candidate), so the search climbs.

None of the anchors has this, and flwr has no strategy for replies without arrays, so the loop is written
here on the Grid API (``query`` messages): the same ServerApp / ClientApp run it on a Flower federation.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from ffm.errors import ConfigError
from ffm.keys import CLIENT_KEY, PARTITION_ID
from ffm.run_dir import RunDirectory
from ffm.settings import CHECKS, SECTIONS, Job, Plain, SectionSpec, items, option, require
from ffm.tasks import TASKS
from ffm.tasks.base import Task

if TYPE_CHECKING:
    from ffm.workspace import Workspace

__all__ = ["CANDIDATES_KEY", "Candidate", "SearchConfig", "aggregate_scores", "edits", "run_prompt_search",
           "score_candidates"]

logger = logging.getLogger("ffm")

CANDIDATES_KEY = "prompt-candidates"  # the query's ConfigRecord: the candidates as JSON
SCORES_KEY = "prompt-scores"  # the reply's MetricRecord: score-<i> per candidate and num-examples


@dataclass
class SearchConfig:
    """``mode=prompt_search``: the candidates, how they are edited, and how clients score them."""

    templates: list[str] = items("mode=prompt_search: candidate templates, each with the task's input slot ({text}, "
                                 "or {} for captions; empty = the task's own template)")
    verbalizers: list[str] = items("mode=prompt_search: candidate label words, one string per candidate with the "
                                   "words in label order separated by | (empty = task.verbalizer)")
    cues: list[str] = items("mode=prompt_search: endings an edit may put after the text of the best template",
                            ("Topic:", "Category:", "Section:", "This article is about"))
    instructions: list[str] = items("mode=prompt_search: first lines an edit may put in front of the best template "
                                    "(or an edit drops the first line)", ("Classify the news article by topic.",))
    edits: int = option(4, "mode=prompt_search: new candidates made from the best so far in every round after the "
                        "first")
    score: str = option("accuracy", "mode=prompt_search: what clients score a candidate by",
                        choices=("accuracy", "loss"))
    noise_multiplier: float = option(
        0.0, "mode=prompt_search: Gaussian noise on the sum of the clients' score vectors, in units of its "
        "sensitivity (client-level DP; score=accuracy only); epsilon is reported")
    delta: float = option(1e-5, "mode=prompt_search: delta of the reported (epsilon, delta)")

    def __post_init__(self) -> None:
        require(self.edits >= 0 and self.noise_multiplier >= 0, "search.edits and search.noise_multiplier must be "
                ">= 0")
        require(self.noise_multiplier == 0 or self.score == "accuracy",
                "search.noise_multiplier > 0 needs search.score=accuracy (a bounded score; loss has no bound)")


def check_search(job: Job) -> None:
    """A search scores prompts of a task that has an input slot, and every template must hold that slot."""
    task = TASKS[job.task.name]
    if not job.mode.trains:
        prompt_tasks = [name for name, cls in TASKS.items() if cls.prompt_slot]
        require(task.prompt_slot is not None,
                f"mode=prompt_search scores prompts of task.name={' or '.join(prompt_tasks)}, not '{job.task.name}'")
    slot = task.prompt_slot or "{text}"
    require(all(slot in t for t in job.search.templates), f"every template of search.templates must contain {slot}")


SECTIONS.register("search", SectionSpec(Plain(SearchConfig), position=30))
CHECKS.register("prompt_search_has_a_slot", check_search)


@dataclass(frozen=True)
class Candidate:
    """One discrete prompt: a template and one label word per class."""

    template: str
    words: tuple[str, ...]

    def as_json(self) -> list:
        """The candidate as it travels in a query message and appears in metrics.jsonl."""
        return [self.template, list(self.words)]


def initial_candidates(job: Job, task: Task) -> list[Candidate]:
    """The configured templates x label words; a prompt task (one with ``prompt_slot``) gives ``prompt_template``,
    ``words()`` and ``with_prompt()``."""
    templates = job.search.templates or [task.prompt_template]
    verbalizers = [tuple(w.strip() for w in v.split("|")) for v in job.search.verbalizers] or [tuple(task.words())]
    return [Candidate(t, v) for t in templates for v in verbalizers]


def _split(template: str) -> tuple[str, str, str]:
    """(first line, the part holding {text} up to its end, the ending after the text)."""
    lines = template.split("\n")
    first = lines[0] if len(lines) > 1 and "{text}" not in lines[0] else ""
    rest = "\n".join(lines[1:]) if first else template
    before, after = rest.split("{text}", 1)
    return first, before + "{text}", after


def edits(best: Candidate, pool: list[Candidate], job: Job, rng: random.Random) -> list[Candidate]:
    """Up to ``search.edits`` new candidates, each a simple edit of ``best``: another ending or first line
    (text prompts), another candidate's template or label words, or one class's word from another."""
    made: list[Candidate] = []
    options: list[Candidate] = []
    if "{text}" in best.template:  # a text prompt: another ending after the text, another first line
        first, body, ending = _split(best.template)
        for cue in job.search.cues:
            new_ending = ("\n" if "\n" in ending or not ending else " ") + cue if cue else ending
            options.append(Candidate((first + "\n" if first else "") + body + new_ending, best.words))
        for line in ["", *job.search.instructions]:
            options.append(Candidate((line + "\n" if line else "") + body + ending, best.words))
    for other in pool:  # another candidate's template with the best's words, or its words with the best's template
        options += [Candidate(other.template, best.words), Candidate(best.template, other.words)]
    for other in pool:
        for k, (mine, theirs) in enumerate(zip(best.words, other.words, strict=False)):
            if mine != theirs:
                options.append(Candidate(best.template, (*best.words[:k], theirs, *best.words[k + 1:])))
    rng.shuffle(options)
    seen = set(pool)
    for candidate in options:
        if candidate not in seen and len(made) < job.search.edits:
            made.append(candidate)
            seen.add(candidate)
    return made


def _candidate_task(ws: Workspace, cand: Candidate) -> Task:
    task = ws.task.with_prompt(cand.template, list(cand.words))
    if hasattr(task, "with_loss"):  # CLIP-style: the contrastive loss costs a text forward per image
        task.with_loss = ws.job.search.score == "loss"
    return task


def score_candidates(ws: Workspace, index: int, candidates: list[Candidate]) -> tuple[list[float], int]:
    """A client's zero-shot score of each candidate on all its own examples (train and validation)."""
    import datasets

    client = ws.data.clients[index]
    data = datasets.concatenate_datasets([client.train, client.val])
    scores = []
    for cand in candidates:
        task = _candidate_task(ws, cand)
        result = task.evaluate(ws.model, task.encode(data, ws.tokenizer, ws.job.model.max_length),
                               ws.job.train.eval_batch_size)
        scores.append(result["accuracy"] if ws.job.search.score == "accuracy" else -result["loss"])
    return scores, len(data)


def aggregate_scores(replies: list[tuple[list[float], int]], job: Job, rng: np.random.Generator
                     ) -> np.ndarray:
    """Mean score per candidate: weighted by examples; with noise, uniform over clients plus Gaussian noise of
    std z * sqrt(K) on the sum (each client's K scores lie in [0, 1], so that is the sum's L2 sensitivity)."""
    scores = np.array([s for s, _ in replies], dtype=np.float64)
    z = job.search.noise_multiplier
    if z <= 0:
        weights = np.array([n for _, n in replies], dtype=np.float64)
        return weights @ scores / weights.sum()
    total = scores.sum(axis=0) + rng.normal(0.0, z * np.sqrt(scores.shape[1]), size=scores.shape[1])
    return total / len(replies)


def search_epsilon(job: Job, rounds: int) -> float:
    """(epsilon at search.delta) of ``rounds`` noisy releases with clients sampled at federation.fraction_train."""
    from opacus.accountants import RDPAccountant

    if job.search.noise_multiplier <= 0:
        return float("inf")
    accountant = RDPAccountant()
    accountant.history = [(job.search.noise_multiplier, job.federation.fraction_train, rounds)]
    return float(accountant.get_epsilon(job.search.delta))


def _test_accuracy(ws: Workspace, cand: Candidate) -> float:
    """The candidate's zero-shot accuracy on the global test set (the server's, never shown to the search)."""
    task = _candidate_task(ws, cand)
    examples = task.encode(ws.data.test, ws.tokenizer, ws.job.model.max_length)
    return task.evaluate(ws.model, examples, ws.job.train.eval_batch_size)["accuracy"]


def _ask(grid: Grid, nodes: list[int], candidates: list[Candidate]) -> tuple[list[tuple[int, list[float], int]], int]:
    payload = json.dumps([c.as_json() for c in candidates])
    messages = [Message(RecordDict({CANDIDATES_KEY: ConfigRecord({"candidates": payload})}), dst_node_id=node,
                        message_type=MessageType.QUERY) for node in nodes]
    replies = []
    for reply in grid.send_and_receive(messages):
        if reply.has_error() or SCORES_KEY not in reply.content.metric_records:
            logger.warning("prompt search: node %s sent no scores; left out", reply.metadata.src_node_id)
            continue
        metrics = reply.content.metric_records[SCORES_KEY]
        party = int(reply.content.config_records[CLIENT_KEY][PARTITION_ID])
        replies.append((party, [float(metrics[f"score-{i}"]) for i in range(len(candidates))],
                        int(metrics["num-examples"])))
    return replies, len(payload.encode()) * len(nodes)


def run_prompt_search(grid: Grid, job: Job, ws: Workspace, run: RunDirectory) -> dict[str, Any]:
    """Rounds of propose, score privately, aggregate, keep the best; then the comparisons on the test set."""
    if run.read_metrics():
        raise ConfigError(f"run_dir '{run.path}' already holds a prompt search (a search is short and does not "
                          "resume); choose another run_dir")
    run.start(job)
    started = time.perf_counter()
    rng, noise = random.Random(job.seed), np.random.default_rng(job.seed)
    candidates = initial_candidates(job, ws.task)
    tried: dict[Candidate, float] = {}
    own_best: dict[int, Candidate] = {}  # each client's own choice: what it would pick alone
    raw: dict[Candidate, dict[int, tuple[float, int]]] = {}  # each party's own (score, examples) per candidate
    bytes_down = bytes_up = 0
    best = candidates[0]
    tested: dict[Candidate, float] = {}  # test accuracy by candidate: each is evaluated on the test set once

    def test_of(cand: Candidate) -> float:
        if cand not in tested:
            tested[cand] = _test_accuracy(ws, cand)
        return tested[cand]

    for server_round in range(1, job.federation.rounds + 1):
        if server_round > 1:
            candidates = [best, *edits(best, list(tried), job, rng)]
        nodes = sorted(grid.get_node_ids())
        nodes = sorted(rng.sample(nodes, max(1, round(len(nodes) * job.federation.fraction_train))))
        replies, sent = _ask(grid, nodes, candidates)
        bytes_down += sent
        bytes_up += sum(8 * (len(s) + 1) for _, s, _ in replies)
        if not replies:
            logger.warning("prompt search: round %d got no scores; the best so far stands", server_round)
            continue
        means = aggregate_scores([(s, n) for _, s, n in replies], job, noise)
        for cand, value in zip(candidates, means, strict=True):
            tried[cand] = float(value)
        for party, scores, count in replies:
            own_best[party] = candidates[int(np.argmax(scores))]
            for cand, score in zip(candidates, scores, strict=True):
                raw.setdefault(cand, {})[party] = (score, count)
        best = max(tried, key=tried.get)
        line = {"round": server_round, "candidates": [c.as_json() for c in candidates],
                "scores": [float(v) for v in means], "best": best.as_json(), "best_score": tried[best],
                "test_accuracy": test_of(best), "clients": [p for p, _, _ in replies],
                "bytes_down": sent, "bytes_up": sum(8 * (len(s) + 1) for _, s, _ in replies)}
        if job.search.noise_multiplier > 0:
            line["epsilon"] = search_epsilon(job, server_round)
        run.append_metrics(line)
        logger.info("round %d: best %r score %.4f test accuracy %.4f", server_round, best.template,
                    tried[best], line["test_accuracy"])
    central = _central_choice(ws, list(tried), raw) if ws.data.clients else None  # simulation: the server holds all
    single = {str(p): test_of(c) for p, c in sorted(own_best.items())}
    summary = {
        "mode": str(job.mode), "task": job.task.name, "primary_metric": "accuracy", "higher_is_better": True,
        "rounds": job.federation.rounds, "selected": best.as_json(),
        "final_test_accuracy": test_of(best), "best_test_accuracy": test_of(best),
        "initial_test_accuracy": test_of(initial_candidates(job, ws.task)[0]),
        "central_choice": central and central.as_json(),
        "central_test_accuracy": central and test_of(central),
        "single_client_test_accuracy": single,
        "candidates_scored": len(tried), "bytes_up": bytes_up, "bytes_down": bytes_down,
        "epsilon": search_epsilon(job, job.federation.rounds) if job.search.noise_multiplier > 0 else None,
        "delta": job.search.delta,
        "wall_time_s": round(time.perf_counter() - started, 2), "run_dir": str(run.path),
    }
    run.write_summary(summary)
    return summary


def _central_choice(ws: Workspace, candidates: list[Candidate],
                    raw: dict[Candidate, dict[int, tuple[float, int]]]) -> Candidate:
    """The baseline that sees all data: the candidate with the best score on the pooled training data.

    A score is a mean over examples, so the pooled score is the example-weighted mean of the parties' own
    scores: those the search already computed are reused and only the (party, candidate) pairs no reply
    covered are scored here (re-scoring every candidate on the pooled data doubled a search's time)."""
    pooled: dict[Candidate, float] = {}
    for cand in candidates:
        known = dict(raw.get(cand, {}))
        for party in range(len(ws.data.clients)):
            if party not in known:
                (score,), count = score_candidates(ws, party, [cand])
                known[party] = (score, count)
        pooled[cand] = sum(s * n for s, n in known.values()) / max(sum(n for _, n in known.values()), 1)
    return max(candidates, key=lambda c: pooled[c])  # the first of equals, as before


def scores_reply(ws: Workspace, index: int, record: ConfigRecord) -> RecordDict:
    """The client half: the scores of the candidates in ``record``, and nothing else."""
    candidates = [Candidate(t, tuple(w)) for t, w in json.loads(str(record["candidates"]))]
    scores, count = score_candidates(ws, index, candidates)
    metrics = MetricRecord({f"score-{i}": float(s) for i, s in enumerate(scores)} | {"num-examples": count})
    return RecordDict({SCORES_KEY: metrics})
