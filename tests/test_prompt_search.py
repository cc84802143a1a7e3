"""Classification by label words of a frozen LM, and discrete prompts chosen from clients' private scores."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ffm.config import ConfigError
from ffm.models import resolve_model_path
from ffm.prompt_search import Candidate, aggregate_scores, edits, search_epsilon
from ffm.runtime import run_local
from ffm.tasks import build_task
from ffm.tasks.verbalizer import VerbalizerConfig
from ffm.workspace import workspace_for

TEMPLATES = ["Article: {text}\nTopic:", "{text}\nCategory:"]
VERBALIZERS = ["business|entertainment|politics|sport|tech", "money|film|government|football|computers"]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _search_job(job_factory, tiny_llama_dir, name: str = "search", **overrides):
    settings = {"mode": "prompt_search", "task__name": "verbalizer_classification", "method__name": "full",
                "model__name": str(tiny_llama_dir), "search__templates": TEMPLATES,
                "search__verbalizers": VERBALIZERS, **overrides}
    return job_factory(name, **settings)


class _Oracle(torch.nn.Module):
    """A 'language model' whose next-token logits at every position favour the token id in ``favour``."""

    def __init__(self, favour: torch.Tensor, vocab: int) -> None:
        super().__init__()
        self.favour, self.vocab = favour, vocab

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[torch.arange(len(input_ids)), :, self.favour[: len(input_ids)]] = 5.0
        return type("Out", (), {"logits": logits})()


def test_the_verbalizer_scores_each_label_word_at_the_last_real_token(tiny_llama_dir):
    import datasets

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    task = build_task(VerbalizerConfig(template="News: {text}\nTopic:", verbalizer=["sport", "tech"]))
    task.label_names = ["sport", "tech"]
    ds = datasets.Dataset.from_dict({"text": ["a long text " * 40, "short"], "label": [1, 0]})
    data = task.encode(ds, tokenizer, max_length=24)
    tail = tokenizer("\nTopic:", add_special_tokens=False)["input_ids"]
    for row, length in zip(data.tensors["input_ids"], data.lengths, strict=True):
        assert row[length - len(tail):length].tolist() == tail  # the template's ending is never truncated
    assert int(data.lengths.max()) <= 24
    words = task.label_token_ids(tokenizer)
    right = _Oracle(words[torch.tensor([1, 0])], tokenizer.vocab_size)
    assert task.evaluate(right, data, batch_size=2)["accuracy"] == 1.0
    wrong = _Oracle(words[torch.tensor([0, 1])], tokenizer.vocab_size)
    assert task.evaluate(wrong, data, batch_size=2)["accuracy"] == 0.0


@pytest.mark.parametrize("soft_prompt", [False, True])
def test_the_label_scores_put_only_each_examples_last_position_through_the_lm_head(tiny_llama_dir, soft_prompt):
    import datasets
    from peft import PromptTuningConfig, get_peft_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    if soft_prompt:  # virtual tokens in front of every example: the last real position moves right
        model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    task = build_task(VerbalizerConfig(template="News: {text}\nTopic:", verbalizer=["sport", "tech"]))
    task.label_names = ["sport", "tech"]
    ds = datasets.Dataset.from_dict({"text": ["a long text " * 40, "short", "middling text here"], "label": [1, 0, 1]})
    batch = task.encode(ds, tokenizer, max_length=24).tensors
    through_head: list[int] = []
    model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: through_head.append(args[0].shape[:-1].numel()))

    with torch.inference_mode():
        scores = task._label_logits(model, batch)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = full[:, -batch["input_ids"].shape[1]:]
    last = batch["attention_mask"].sum(dim=1) - 1
    expected = full[torch.arange(3), last].gather(1, batch["label_token_ids"])

    assert torch.allclose(scores, expected, atol=1e-5)
    assert through_head[:2] == [3, 3]  # one position of logits from the model (logits_to_keep=1), 3 rows after


def test_label_words_sharing_a_first_token_are_an_error(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    task = build_task(VerbalizerConfig(verbalizer=["sport", "sport"]))
    with pytest.raises(ConfigError, match="same token"):
        task.label_token_ids(tokenizer)


def test_prompt_tuning_federates_a_frozen_decoder_classifying_by_label_words(job_factory, tiny_llama_dir):
    job = job_factory("soft", task__name="verbalizer_classification", method__name="prompt_tuning",
                      method__virtual_tokens=4, model__name=str(tiny_llama_dir), train__lr=0.05)
    summary, _ = run_local(job)
    assert summary["rounds"] == 2 and 0.0 <= summary["final_test_accuracy"] <= 1.0
    assert summary["trainable_params"] == 4 * 32  # the virtual tokens' embeddings alone


def test_a_search_round_carries_no_tensors_and_replies_scores_only(job_factory, tiny_llama_dir, carried):
    job = _search_job(job_factory, tiny_llama_dir)
    summary, grid = run_local(job)
    assert grid.bytes_down == grid.bytes_up == 0
    assert carried and all(not msg.content.array_records for msg, _ in carried)
    for _, reply in carried:
        assert not reply.content.array_records
        assert set(reply.content.metric_records) <= {"prompt-scores"}
    assert summary["selected"] and summary["candidates_scored"] >= 4
    assert 0.0 <= summary["final_test_accuracy"] <= 1.0 and summary["epsilon"] is None


def test_the_aggregate_is_the_example_weighted_mean_of_the_clients_scores(job_factory, tiny_llama_dir):
    job = _search_job(job_factory, tiny_llama_dir)
    replies = [([0.5, 0.25], 10), ([1.0, 0.0], 30)]
    expected = [(0.5 * 10 + 1.0 * 30) / 40, (0.25 * 10) / 40]
    assert aggregate_scores(replies, job, np.random.default_rng(0)).tolist() == pytest.approx(expected)


def test_the_first_round_matches_a_hand_computation_over_the_clients(job_factory, tiny_llama_dir):
    from ffm.prompt_search import initial_candidates, score_candidates

    job = _search_job(job_factory, tiny_llama_dir, federation__rounds=1)
    summary, _ = run_local(job)
    ws = workspace_for(job)
    candidates = initial_candidates(job, ws.task)
    by_client = [score_candidates(ws, i, candidates) for i in range(3)]
    total = sum(n for _, n in by_client)
    hand = [sum(s[k] * n for s, n in by_client) / total for k in range(len(candidates))]
    line = (Path(job.run_dir) / "metrics.jsonl").read_text().splitlines()[0]
    assert json.loads(line)["scores"] == pytest.approx(hand)
    assert summary["selected"] == candidates[int(np.argmax(hand))].as_json()


def test_noisy_scores_give_a_finite_epsilon_that_falls_as_the_noise_grows(job_factory, tiny_llama_dir):
    job = _search_job(job_factory, tiny_llama_dir, search__noise_multiplier=1.0)
    summary, _ = run_local(job)
    assert 0 < summary["epsilon"] < float("inf")
    louder = _search_job(job_factory, tiny_llama_dir, "louder", search__noise_multiplier=2.0)
    assert search_epsilon(louder, 2) < search_epsilon(job, 2)
    noisy = aggregate_scores([([0.5, 0.5], 10)], job, np.random.default_rng(0))
    assert noisy.tolist() != [0.5, 0.5]


def test_edits_change_one_thing_of_the_best_and_repeat_nothing(job_factory, tiny_llama_dir):
    job = _search_job(job_factory, tiny_llama_dir, search__edits=6)
    best = Candidate("Article: {text}\nTopic:", ("business", "entertainment", "politics", "sport", "tech"))
    other = Candidate("Article: {text}\nTopic:", ("money", "film", "government", "football", "computers"))
    made = edits(best, [best, other], job, random.Random(0))
    assert len(made) == 6 and best not in made and other not in made and len(set(made)) == 6
    for cand in made:
        changed_words = sum(a != b for a, b in zip(cand.words, best.words, strict=True))
        assert (cand.template != best.template) + changed_words == 1


def test_prompt_search_needs_the_verbalizer_task(job_factory, tiny_llama_dir):
    with pytest.raises(ConfigError, match="verbalizer_classification"):
        job_factory("bad", mode="prompt_search")


def test_caption_search_scores_a_trained_clip_models_zero_shot_prompts(job_factory):
    from test_tasks import _clip_job

    trained = _clip_job(job_factory, "clip", task__freeze_text=True, task__caption="{}", federation__rounds=1)
    run_local(trained)
    search = _clip_job(job_factory, "captions", task__freeze_text=True, task__caption="{}", mode="prompt_search",
                       federation__rounds=2, model__init_from=trained.run_dir,
                       search__templates=["{}", "digit {}"], search__edits=2)
    summary, grid = run_local(search)

    assert grid.bytes_up == grid.bytes_down == 0
    assert summary["candidates_scored"] >= 2 and 0.0 <= summary["final_test_accuracy"] <= 1.0
    trained_line = json.loads((Path(trained.run_dir) / "metrics.jsonl").read_text().splitlines()[-1])
    # the first candidate ("{}" with the class names) is the trained run's own zero-shot prompt
    assert summary["initial_test_accuracy"] == pytest.approx(trained_line["test_accuracy"])


def test_search_from_a_run_of_another_model_is_a_clear_error(job_factory, tiny_llama_dir):
    from ffm.errors import DataError

    other = job_factory("other", federation__rounds=1)
    run_local(other)
    with pytest.raises(DataError, match="another model or method"):
        run_local(_search_job(job_factory, tiny_llama_dir, model__init_from=other.run_dir))


def test_the_central_baseline_is_the_best_candidate_on_the_pooled_data_without_scoring_it_twice(
        job_factory, tiny_llama_dir, monkeypatch):
    import datasets

    import ffm.prompt_search as search

    job = _search_job(job_factory, tiny_llama_dir, "central", federation__fraction_train=0.5)
    scored: list[tuple[int, int]] = []  # (party, candidates) per call
    original = search.score_candidates
    monkeypatch.setattr(search, "score_candidates",
                        lambda ws, index, cands: scored.append((index, len(cands))) or original(ws, index, cands))

    summary, _ = run_local(job)

    ws = workspace_for(job)
    pooled = datasets.concatenate_datasets([d for c in ws.data.clients for d in (c.train, c.val)])
    tried = [Candidate(t, tuple(w)) for line in _metrics(job) for t, w in line["candidates"]]
    accuracy = {}
    for cand in dict.fromkeys(tried):
        task = ws.task.with_prompt(cand.template, list(cand.words))
        accuracy[cand] = task.evaluate(ws.model, task.encode(pooled, ws.tokenizer, job.model.max_length),
                                       job.train.eval_batch_size)["accuracy"]
    best = max(accuracy.values())
    assert accuracy[Candidate(summary["central_choice"][0], tuple(summary["central_choice"][1]))] == pytest.approx(best)
    asked = sum(len(line["clients"]) * len(line["candidates"]) for line in _metrics(job))
    parties = len(ws.data.clients)
    assert sum(n for _, n in scored) == parties * len(accuracy) + asked - _covered(job)  # the rest came from replies


def _metrics(job) -> list[dict]:
    return [json.loads(x) for x in Path(job.run_dir, "metrics.jsonl").read_text().splitlines()]


def _covered(job) -> int:
    """(party, candidate) pairs some reply scored, counted once."""
    return len({(p, t, tuple(w)) for line in _metrics(job) for p in line["clients"] for t, w in line["candidates"]})
