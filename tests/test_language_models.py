"""Federated pre-training: causal and masked LM tasks on Tiny Shakespeare split by speaking role (tiny models
from configs, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from ffm.config import DataConfig
from ffm.data import load_shakespeare, split_federated
from ffm.runtime import run_local
from ffm.tasks import ensure_pad_token
from ffm.workspace import workspace_for

SHAKESPEARE = {"data__source": "tinyshakespeare", "data__partitioner": "natural", "data__partition_column": "role",
               "data__max_examples": 600}


def _lm_job(job_factory, name: str, task: str, architecture: str, **overrides):
    settings = {
        "task__name": task, "model__from_scratch": True, "model__architecture": architecture,
        "model__hidden_size": 32, "model__layers": 1, "model__heads": 2, "model__max_length": 32,
        "method__name": "full", "train__lr": 3e-3, "train__local_steps": 8, "train__batch_size": 8,
        "federation__fraction_evaluate": 0.0, **SHAKESPEARE, **overrides,
    }
    if task == "causal_lm":
        settings["task__eval_tokens"] = 3000
    return job_factory(name, **settings)


def _perplexities(run_dir: str) -> list[float]:
    return [json.loads(x)["test_perplexity"] for x in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("task", "architecture"), [("causal_lm", "gpt2"), ("causal_lm", "llama"),
                                                     ("masked_lm", "bert")])
def test_a_language_model_from_scratch_federates_and_its_held_out_perplexity_falls(job_factory, task, architecture):
    job = _lm_job(job_factory, f"{task}-{architecture}", task, architecture)

    summary, _ = run_local(job)

    perplexity = _perplexities(job.run_dir)
    assert summary["primary_metric"] == "perplexity" and len(perplexity) == 3
    assert perplexity[-1] < 0.8 * perplexity[0], perplexity  # random init starts near the vocabulary size
    assert summary["best_test_perplexity"] == min(perplexity[1:])  # lower is better


def test_a_causal_lm_writes_a_sample_from_the_fixed_prompt_every_round(job_factory):
    job = _lm_job(job_factory, "samples", "causal_lm", "gpt2", task__prompt="romeo :", task__sample_tokens=5)

    run_local(job)

    samples = [json.loads(x) for x in Path(job.run_dir, "samples.jsonl").read_text().splitlines()]
    assert [s["round"] for s in samples] == [0, 1, 2]
    assert all(s["text"].startswith("romeo :") and len(s["text"]) > len("romeo :") for s in samples)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_sample_longer_than_the_context_never_reads_the_untrained_last_position(temperature):
    # a block of `context` tokens trains predictions from positions 0..context-2 only: the sliding window must
    # stay one token short of the context, or the sample turns to noise once it slides (nanoGPT crops likewise)
    from ffm.models.tokenizers import byte_tokenizer
    from ffm.tasks.causal_lm import CausalLM, CausalLMConfig

    tokenizer = byte_tokenizer()
    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(tokenizer), n_positions=8, n_embd=16,
                                                        n_layer=1, n_head=2))
    widths: list[int] = []
    model.register_forward_pre_hook(lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    task = CausalLM(CausalLMConfig(prompt="ROMEO:", sample_tokens=12, sample_temperature=temperature))

    text = task.sample(model, tokenizer)

    assert text.startswith("ROMEO:") and len(widths) == 12  # one forward per new token
    assert max(widths) == 7  # the context (8) less the position no block trains


def test_the_natural_partition_gives_each_role_to_exactly_one_party():
    cfg = DataConfig(source="tinyshakespeare", partitioner="natural", partition_column="role")

    data = split_federated(load_shakespeare(), cfg, num_clients=4, seed=0)

    roles = [set(c.train["role"]) | set(c.val["role"]) for c in data.clients]
    assert all(len(r) == 1 for r in roles)
    assert len(set.union(*roles)) == 4
    assert set(data.test["role"]) == set.union(*roles)  # every party's own held-out share is in the test set


def test_a_saved_lm_adapter_reloads_with_peft_and_generates_the_same_tokens(job_factory, tmp_path):
    job = _lm_job(job_factory, "lora", "causal_lm", "gpt2", method__name="lora", method__targets=["c_attn"],
                  federation__rounds=1, train__lr=5e-2)
    run_local(job)
    workspace = workspace_for(job)
    encoded = workspace.tokenizer("romeo :", add_special_tokens=False, return_tensors="pt")
    prompt = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    base = workspace.task.build_model(job.model, [], workspace.tokenizer, job.seed)  # the same random base
    loaded = PeftModel.from_pretrained(base, Path(job.run_dir) / "final").eval()

    expected = workspace.model.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=0), expected)
    assert any("lora_" in n for n in workspace.initial_state)


def test_a_tokenizer_without_a_pad_token_pads_with_its_end_of_text_token(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    tokenizer.eos_token = "[SEP]"
    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2))

    ensure_pad_token(tokenizer, model)

    assert tokenizer.pad_token == "[SEP]" and model.config.pad_token_id == tokenizer.sep_token_id
    assert tokenizer(["a", "a b c"], padding=True)["input_ids"][0][-1] == tokenizer.sep_token_id


@pytest.mark.slow  # dequantizes the real SmolLM2-135M GGUF (about 35 s) into a 0.5 GB checkpoint
def test_smollm2_is_converted_once_from_its_gguf_into_a_plain_llama_checkpoint(tmp_path, monkeypatch):
    from ffm.models import resolve_model_path

    monkeypatch.setenv("FFM_CACHE_DIR", str(tmp_path))

    path = Path(resolve_model_path("smollm2"))

    assert path == tmp_path / "smollm2-135m-instruct" and not (tmp_path / "smollm2-135m-instruct.partial").exists()
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0])  # a real pretrained model, not random weights
    assert resolve_model_path("smollm2") == str(path)  # converted once: the cache is used from then on


@pytest.mark.parametrize("architecture", ["bert", "roberta"])
@pytest.mark.parametrize("adapted", [False, True])
def test_the_masked_lm_loss_projects_only_the_masked_tokens_and_equals_transformers_loss(architecture, adapted):
    # the vocabulary projection on masked positions only must leave the loss and its gradients as transformers
    # computes them over every position; with LoRA on the encoder and the head's transform trained beside it
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForMaskedLM, BertConfig, RobertaConfig

    from ffm.tasks.masked_lm import MaskedLM

    torch.manual_seed(0)
    shape = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 40, "hidden_dropout_prob": 0.0,
             "attention_probs_dropout_prob": 0.0}  # dropout would draw different masks for the two forwards
    model = AutoModelForMaskedLM.from_config(BertConfig(**shape) if architecture == "bert" else RobertaConfig(**shape))
    if adapted:
        model = get_peft_model(model, LoraConfig(r=2, target_modules=["query", "value"], init_lora_weights=False,
                                                 modules_to_save=["dense"] if architecture == "roberta" else
                                                 ["transform"]))
    labels = torch.full((3, 12), -100)
    labels[:, ::4] = torch.randint(4, 50, (3, 3))
    masked = {"input_ids": torch.randint(4, 50, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long),
              "labels": labels}
    projected: list[int] = []
    inner = model.get_base_model() if adapted else model
    decoder = inner.get_output_embeddings()
    decoder.register_forward_hook(lambda _m, args, _out: projected.append(args[0].shape[:-1].numel()))

    sparse = MaskedLM._masked_loss(model, masked)
    sparse_grads = torch.autograd.grad(sparse, [p for p in model.parameters() if p.requires_grad])
    full = model(**masked).loss
    full_grads = torch.autograd.grad(full, [p for p in model.parameters() if p.requires_grad])

    assert projected == [9, 36]  # the 9 masked tokens; transformers' own forward projects all 36 positions
    torch.testing.assert_close(sparse, full)
    for a, b in zip(sparse_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b)
