"""Instruction tuning and preference alignment of decoders: chat data in the formats users have, the loss on the
assistant's tokens only, generation scores, DPO held to TRL's loss, and both tasks in every mode (small random
Llama models with MiniLM's tokenizer and a small chat template; never SmolLM2 here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ffm.data.chat import messages_of, preference_of
from ffm.errors import DataError
from ffm.models import resolve_model_path
from ffm.runtime import run_local
from ffm.tasks.chat import fit, prompt_ids, render

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} [SEP] {% endfor %}"
            "{% if add_generation_prompt %}<assistant> {% endif %}")
COLOURS = ["red", "blue", "green", "black", "white", "grey", "pink", "gold"]


def _tokenizer(template: str | None = TEMPLATE):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    tokenizer.chat_template = template
    tokenizer.eos_token = "[SEP]"
    return tokenizer


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer random Llama whose tokenizer (MiniLM's) carries a small chat template."""
    path = tmp_path_factory.mktemp("chat-llama")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                 max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.sep_token_id)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- data formats -----------------------------------------------------------------------------------------


def test_alpaca_openai_and_sharegpt_rows_become_the_same_messages():
    alpaca = {"instruction": "Name a colour.", "input": "", "output": "red"}
    openai = {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "red"}]}
    sharegpt = {"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "red"}]}

    assert messages_of(alpaca, "a") == messages_of(openai, "b") == messages_of(sharegpt, "c") == openai["messages"]


def test_an_alpaca_input_is_appended_to_its_instruction():
    row = {"instruction": "Summarize.", "input": "A long story.", "output": "Short."}

    assert messages_of(row, "x")[0]["content"] == "Summarize.\n\nA long story."


@pytest.mark.parametrize(("row", "said"), [
    ({"instruction": "Name a colour.", "output": ""}, "has no response"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "has no response"),
    ({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}, "unknown role 'robot'"),
    ({"text": "hello"}, "no instruction data"),
])
def test_a_bad_instruction_row_is_a_one_line_error_naming_the_row(row, said):
    with pytest.raises(DataError, match=said) as error:
        messages_of(row, "data.jsonl, row 7")

    assert "data.jsonl, row 7" in str(error.value) and "\n" not in str(error.value)


def test_preference_rows_as_strings_and_as_whole_conversations_give_the_same_pair():
    explicit = {"prompt": "Sky colour?", "chosen": "blue", "rejected": "green"}
    implicit = {"chosen": [{"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "blue"}],
                "rejected": [{"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "green"}]}

    assert preference_of(explicit, "a") == preference_of(implicit, "b") == (
        [{"role": "user", "content": "Sky colour?"}], "blue", "green")


def test_a_preference_row_without_its_rejected_reply_is_refused():
    with pytest.raises(DataError, match="'chosen' and 'rejected'"):
        preference_of({"prompt": "x", "chosen": "y"}, "row 1")


# --- rendering and the loss mask ------------------------------------------------------------------------------


def test_the_loss_is_on_the_assistants_tokens_only_every_turn_and_its_end_of_turn():
    tokenizer = _tokenizer()
    messages = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": "second question"}, {"role": "assistant", "content": "second answer"}]

    rendered = render(tokenizer, messages)

    marked = [t for t, mine in zip(tokenizer.convert_ids_to_tokens(rendered.ids), rendered.assistant, strict=True)
              if mine]
    assert marked == ["first", "answer", "[SEP]", "second", "answer", "[SEP]"]


def test_a_tokenizer_without_a_chat_template_needs_task_template_and_then_renders_turns_through_it():
    tokenizer = _tokenizer(template=None)
    messages = [{"role": "user", "content": "name a colour"}, {"role": "assistant", "content": "red"}]

    with pytest.raises(DataError, match=r"set task\.template"):
        render(tokenizer, messages)
    rendered = render(tokenizer, messages, "### instruction: {prompt} ### response:")

    tokens = tokenizer.convert_ids_to_tokens(rendered.ids)
    assert [t for t, mine in zip(tokens, rendered.assistant, strict=True) if mine] == ["red", "[SEP]"]
    assert tokens[:4] == ["#", "#", "#", "instruction"]


def test_truncation_shortens_the_story_and_keeps_the_instruction_and_the_whole_response():
    tokenizer = _tokenizer()
    story = " ".join(["word"] * 200)
    messages = [{"role": "user", "content": f"Write a headline. {story}"},
                {"role": "assistant", "content": "a short headline here"}]

    kept, rendered = fit(tokenizer, messages, max_length=32)

    assert len(rendered.ids) <= 32 and kept[0]["content"].startswith("Write a headline.")
    tokens = tokenizer.convert_ids_to_tokens(rendered.ids)
    assert [t for t, mine in zip(tokens, rendered.assistant, strict=True) if mine] == [
        "a", "short", "headline", "here", "[SEP]"]
    assert prompt_ids(tokenizer, kept[:1])[-3:] == tokenizer.convert_tokens_to_ids(["<", "assistant", ">"])


# --- DPO against TRL ------------------------------------------------------------------------------------------


def test_the_dpo_loss_equals_trls_on_the_same_batch_to_1e_5(chat_llama, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from trl import DPOConfig, DPOTrainer

    from ffm.tasks.instruction import response_logps
    from ffm.tasks.preference import Preference, PreferenceConfig, dpo_loss

    tokenizer = AutoTokenizer.from_pretrained(chat_llama)
    torch.manual_seed(0)  # large random weights: an adapter on the attention then moves the log-probabilities
    base = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                        initializer_range=0.5, pad_token_id=tokenizer.pad_token_id))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    pairs = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": f"favourite colour {i}?"}] for i in range(4)],
        "chosen": [[{"role": "assistant", "content": c}] for c in COLOURS[:4]],
        "rejected": [[{"role": "assistant", "content": f"not {c} at all"}] for c in COLOURS[4:]]})
    trainer = DPOTrainer(model=model, processing_class=tokenizer, train_dataset=pairs, args=DPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], beta=0.3, use_cpu=True))
    task = Preference(PreferenceConfig(beta=0.3))
    task.tokenizer = tokenizer
    task.prepare(model)  # the reference: the adapter as it starts (B = 0: the base model), as TRL's
    torch.manual_seed(1)
    with torch.no_grad():  # the policy moves away from it
        for name, param in model.named_parameters():
            if "lora_B.default" in name:
                param.normal_(0.0, 1.0)
    batch = next(iter(trainer.get_train_dataloader()))
    model.eval()

    theirs = float(trainer._compute_loss(model, batch, return_outputs=False))
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        policy, _ = response_logps(model, batch["input_ids"], batch["attention_mask"], labels)
        with task.as_reference(model):
            reference, _ = response_logps(model, batch["input_ids"], batch["attention_mask"], labels)
    ours = float(dpo_loss(*policy.chunk(2), *reference.chunk(2), beta=0.3).mean())

    assert (policy - reference).abs().min() > 0.5  # policy and reference differ: the comparison means something
    assert ours == pytest.approx(theirs, abs=1e-5)


# --- every mode ------------------------------------------------------------------------------------------------


def _colour_rows(n: int) -> list[dict]:
    """'What colour is thing k?' -> a colour determined by k: learnable, with a topic label to split by."""
    return [{"messages": [{"role": "user", "content": f"what colour is thing {k}?"},
                          {"role": "assistant", "content": COLOURS[k % 4]}], "topic": COLOURS[k % 4]}
            for k in range(n)]


def _sft_job(job_factory, chat_llama, data: Path, name: str = "sft", **overrides):
    settings = {"task__name": "instruction", "model__name": str(chat_llama), "model__max_length": 48,
                "data__source": "instructions", "data__path": str(data), "data__label_column": "topic",
                "data__max_examples": 0, "data__partitioner": "dirichlet", "data__alpha": 1.0,
                **({} if "method__name" in overrides else {"method__targets": ["q_proj", "v_proj"]}),
                "train__lr": 0.02, "train__local_steps": 4,
                "task__max_new_tokens": 4, "task__eval_generate": 16, **overrides}
    return job_factory(name, **settings)


@pytest.mark.parametrize("mode", ["federated", "centralized", "local"])
def test_instruction_tuning_runs_in_every_mode_and_scores_generations(job_factory, chat_llama, tmp_path, mode):
    data = _write_jsonl(tmp_path / "colours.jsonl", _colour_rows(120))
    job = _sft_job(job_factory, chat_llama, data, mode=mode, federation__rounds=2)

    summary, _ = run_local(job)

    lines = [json.loads(x) for x in (Path(job.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert summary["primary_metric"] == "rougeL" and 0.0 <= summary["final_test_rougeL"] <= 1.0
    assert all({"test_rougeL", "test_exact_match", "test_perplexity"} <= set(line) for line in lines)
    assert lines[-1]["test_loss"] < lines[0]["test_loss"]  # the responses got likelier
    samples = (Path(job.run_dir) / "samples.jsonl").read_text()
    assert "REFERENCE:" in samples and "REPLY:" in samples


def test_dpo_from_an_sft_run_learns_the_preference_on_held_out_pairs(job_factory, chat_llama, tmp_path):
    sft = _sft_job(job_factory, chat_llama, _write_jsonl(tmp_path / "sft.jsonl", _colour_rows(80)),
                   federation__rounds=1)
    run_local(sft)
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"is thing {k} nice?", "chosen": "yes it is", "rejected": "no", "topic": COLOURS[k % 4]}
        for k in range(120)])
    dpo = _sft_job(job_factory, chat_llama, pairs, name="dpo", task__name="preference", data__source="preferences",
                   model__init_from=sft.run_dir, task__beta=0.5, train__lr=0.05, federation__rounds=3)

    summary, _ = run_local(dpo)

    lines = [json.loads(x) for x in (Path(dpo.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["test_preference_accuracy"] == 0.0  # round 0: the policy is its reference
    assert summary["final_test_preference_accuracy"] >= 0.9 and lines[-1]["test_reward_margin"] > 0
    assert "test_rougeL" in lines[-1]


def test_dpo_with_full_fine_tuning_is_refused_before_it_trains(job_factory, chat_llama, tmp_path):
    from ffm.errors import ConfigError

    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 20)
    job = _sft_job(job_factory, chat_llama, pairs, task__name="preference", data__source="preferences",
                   method__name="full", data__label_column="label", data__partitioner="iid")

    with pytest.raises(ConfigError, match="needs a method that trains a small part"):
        run_local(job)


def test_the_derived_headline_task_answers_with_the_real_ag_news_headline():
    from ffm.data.chat import HEADLINE
    from ffm.data.config import SOURCES, DataConfig

    ds = SOURCES["ag_news_headlines"].load(DataConfig(source="ag_news_headlines"))

    first = ds[0]["messages"]
    assert first[0]["content"].startswith(HEADLINE.split("{")[0]) and first[1]["role"] == "assistant"
    assert first[1]["content"] == "Fears for T N pension after talks"  # AG News test.csv, row 1's title
    assert len(ds) == 7600 and ds.features["label"].names == ["Business", "Sci/Tech", "Sports", "World"]


def test_self_generated_rejections_are_generated_once_and_read_back(chat_llama, tmp_path, monkeypatch):
    from ffm.data.chat import model_replies

    monkeypatch.setenv("FFM_CACHE_DIR", str(tmp_path))
    prompts = ["what colour is thing 1?", "what colour is thing 2?"]

    first = model_replies(str(chat_llama), prompts, max_new_tokens=3)
    cached = list((tmp_path / "replies").glob("*.json"))
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: 1 / 0)

    assert model_replies(str(chat_llama), prompts, max_new_tokens=3) == first and len(cached) == 1


@pytest.mark.slow
@pytest.mark.xdist_group("federation")
def test_instruction_tuning_then_dpo_run_unchanged_on_warm_supernodes(job_factory, chat_llama, tmp_path):
    from federation import federation, tail

    sft_data = _write_jsonl(tmp_path / "sft.jsonl", _colour_rows(80))
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"is thing {k} nice?", "chosen": "yes it is", "rejected": "no", "topic": COLOURS[k % 4]}
        for k in range(80)])
    one_round = {"runtime": "flower", "federation__rounds": 1, "federation__fraction_evaluate": 0.0,
                 "federation__num_clients": 2}
    sft = _sft_job(job_factory, chat_llama, sft_data, **one_round)
    dpo = _sft_job(job_factory, chat_llama, pairs, name="dpo", task__name="preference", data__source="preferences",
                   model__init_from=sft.run_dir, task__beta=0.5, train__lr=0.05, **one_round)

    with federation(tmp_path / "fed", num_nodes=2, warm=True) as fed:
        fed.run(sft, timeout=300)
        fed.run(dpo, timeout=300)

    first = json.loads((Path(sft.run_dir) / "summary.json").read_text())
    second = json.loads((Path(dpo.run_dir) / "summary.json").read_text())
    assert first["rounds"] == 1 and not first["failed_rounds"] and first["final_test_rougeL"] is not None
    assert second["rounds"] == 1 and not second["failed_rounds"], tail(fed.logs / "flwr-run.log")
    assert second["final_test_preference_accuracy"] is not None
