"""Runs that end at convergence and what it took: the early-stopping rule, time-to-target accounting, outer
optimizers (DiLoCo, Nesterov FedAvgM) and the pieces of the nanoGPT anchor (bytes, nanoGPT's split, roles
grouped whole into parties, a persistent inner optimizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_state, run_interrupted

from ffm.budget import BudgetConfig, should_stop, time_to_target
from ffm.config import load_job
from ffm.data import load_source, split_federated
from ffm.errors import ConfigError
from ffm.keys import OPTIMIZER_KEY
from ffm.models.tokenizers import byte_tokenizer
from ffm.runtime import run_local
from ffm.strategies.outer import outer_step


def _lines(run_dir: str) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _val_lines(values: list[float | None]) -> list[dict]:
    lines = [{"round": 0}]
    for r, value in enumerate(values, start=1):
        lines.append({"round": r, "val": {} if value is None else {"val_accuracy": value},
                      "clients": [{"local_steps": 4, "tokens_seen": 100}], "bytes_up": 10, "bytes_down": 20,
                      "wall_time_s": 1.5})
    return lines


def _first_stop(lines: list[dict], budget: BudgetConfig) -> int | None:
    """The first round after which ``should_stop`` ends the run (None: it never does)."""
    return next((r for r in range(1, len(lines)) if should_stop(lines[: r + 1], "accuracy", True, budget)), None)


@pytest.mark.parametrize(
    ("values", "patience", "min_delta", "stops_after"),
    [
        ([0.5, 0.6, 0.6, 0.59], 2, 0.0, 4),  # best at round 2; rounds 3 and 4 do not beat it
        ([0.5, 0.6, 0.6], 2, 0.0, None),  # one round without gain: patience 2 not yet spent
        ([0.5, 0.6, 0.605, 0.609], 2, 0.01, 4),  # +0.005 and +0.009 over 0.6: both below min_delta
        ([0.5, None, 0.4, 0.7], 2, 0.0, None),  # a round without validation does not count
        ([0.5, None, 0.4, 0.45], 2, 0.0, 4),
    ],
)
def test_a_run_stops_exactly_when_its_patience_runs_out(values, patience, min_delta, stops_after):
    assert _first_stop(_val_lines(values), BudgetConfig(patience=patience, min_delta=min_delta)) == stops_after


def test_patience_never_stops_a_run_before_budget_min_rounds():
    lines = _val_lines([0.28, 0.29, 0.28, 0.28, 0.29, 0.28, 0.5])  # a low learning rate: flat near chance, then up

    assert _first_stop(lines, BudgetConfig(patience=3)) == 5
    assert _first_stop(lines, BudgetConfig(patience=3, min_rounds=7)) is None  # round 7 improves: it goes on
    assert _first_stop(lines, BudgetConfig(patience=3, min_rounds=6)) == 6


def test_with_watch_loss_a_falling_validation_loss_keeps_a_run_whose_accuracy_stands_still():
    # BBC News at alpha 0.1, seed 1: one class predicted for 6 rounds while the loss fell, then the climb
    accuracy = [0.212, 0.329, 0.306, 0.271, 0.271, 0.271, 0.341, 0.376]
    losses = [1.604, 1.593, 1.575, 1.557, 1.537, 1.508, 1.468, 1.431]
    lines = _val_lines(accuracy)
    for line, loss in zip(lines[1:], losses, strict=True):
        line["val"]["val_loss"] = loss
    # the same accuracy with the loss going up round by round (3.0 - each falling loss)
    rising = [dict(line, val=dict(line["val"], val_loss=3.0 - line["val"]["val_loss"])) for line in lines[1:]]

    assert _first_stop(lines, BudgetConfig(patience=4)) == 6  # where the study stopped it
    assert _first_stop(lines, BudgetConfig(patience=4, watch_loss=True)) is None
    assert _first_stop([lines[0], *rising], BudgetConfig(patience=4, watch_loss=True)) == 6  # no help from it


def test_patience_reads_a_loss_downward_and_max_tokens_stops_on_the_clients_count():
    lines = [{"round": 0}, *({"round": r, "val": {"val_perplexity": v}, "clients": [{"tokens_seen": 300}]}
                             for r, v in enumerate([9.0, 8.0, 8.5, 8.2], start=1))]

    assert should_stop(lines, "perplexity", False, BudgetConfig(patience=2)).startswith("no better validation")
    assert not should_stop(lines[:4], "perplexity", False, BudgetConfig(patience=2))
    assert should_stop(lines[:3], "perplexity", False, BudgetConfig(max_tokens=600)).startswith("budget.max_tokens")
    assert not should_stop(lines[:2], "perplexity", False, BudgetConfig(max_tokens=600))


def test_time_to_target_sums_what_each_round_cost_until_the_fraction_is_first_reached():
    lines = _val_lines([0.50, 0.80, 0.90, 0.99])

    cost = time_to_target(lines, "accuracy", True, target=1.0, fractions=[0.9, 0.95, 0.999])

    assert cost["0.9"] == {"round": 3.0, "local_steps": 12.0, "tokens": 300.0, "bytes": 90.0, "seconds": 4.5}
    assert cost["0.95"]["round"] == 4.0
    assert cost["0.999"] is None
    loss = time_to_target(_val_lines([2.0, 1.1, 1.04]), "accuracy", False, target=1.0, fractions=[0.95])
    assert loss["0.95"]["round"] == 3.0  # a loss reaches 95% of its target at target / 0.95 = 1.0526


def test_nesterovs_outer_step_equals_a_hand_computation():
    x0, means = torch.tensor([1.0, -2.0]), [torch.tensor([0.5, -1.0]), torch.tensor([0.2, -0.6])]
    lr, mu = 0.7, 0.9

    x1, buf1 = outer_step({"w": x0}, {"w": means[0]}, None, lr=lr, momentum=mu, nesterov=True)
    x2, _ = outer_step(x1, {"w": means[1]}, buf1, lr=lr, momentum=mu, nesterov=True)

    g1 = x0.double() - means[0].double()  # [0.5, -1.0]; the buffer starts at g1
    expected1 = x0.double() - lr * (g1 + mu * g1)
    g2 = expected1 - means[1].double()
    b2 = mu * g1 + g2
    expected2 = expected1 - lr * (g2 + mu * b2)
    assert torch.allclose(x1["w"].double(), expected1, atol=1e-6)
    assert torch.allclose(x2["w"].double(), expected2, atol=1e-6)
    heavy, _ = outer_step(x1, {"w": means[1]}, buf1, lr=lr, momentum=mu, nesterov=False)
    assert torch.allclose(heavy["w"].double(), x1["w"].double() - lr * (mu * buf1["w"] + (x1["w"].double()
                                                                                         - means[1].double())))


def test_diloco_with_outer_lr_1_and_no_momentum_is_fedavg_bit_for_bit(job_factory):
    fedavg = job_factory("fedavg")
    diloco = job_factory("diloco", strategy__name="diloco", strategy__outer_lr=1.0, strategy__outer_momentum=0.0)

    run_local(fedavg)
    run_local(diloco)

    a, b = checkpoint_state(fedavg.run_dir, 2), checkpoint_state(diloco.run_dir, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_keeps_its_patience_counter_and_outer_momentum(job_factory, monkeypatch):
    settings = {"strategy__name": "diloco", "federation__rounds": 6, "budget__patience": 2, "train__lr": 0.05}
    straight = job_factory("straight", **settings)
    run_local(straight)
    stopped = json.loads((Path(straight.run_dir) / "summary.json").read_text())["stopped_early"]

    broken = job_factory("broken", **settings)
    run_interrupted(broken, monkeypatch, at_train_call=2 * 3 + 1)  # mid round 3, rounds 1-2 checkpointed
    broken.resume = True
    run_local(broken)

    resumed = json.loads((Path(broken.run_dir) / "summary.json").read_text())["stopped_early"]
    assert stopped is not None and stopped["round"] > 2  # the patience counted rounds on both sides of the resume
    assert resumed == stopped
    last = len(_lines(straight.run_dir)) - 1
    a, b = checkpoint_state(straight.run_dir, last), checkpoint_state(broken.run_dir, last)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_early_stop_ends_after_a_complete_round_and_says_why(job_factory):
    job = job_factory("patient", federation__rounds=8, budget__patience=1, train__lr=0.05)

    summary, _ = run_local(job)

    lines = _lines(job.run_dir)
    assert summary["stopped_early"] is not None  # this tiny job plateaus within 8 rounds
    stop = summary["stopped_early"]["round"]
    assert lines[-1]["round"] == stop == summary["rounds"] and "test_accuracy" in lines[-1]
    assert should_stop(lines, "accuracy", True, BudgetConfig(patience=1))
    assert not should_stop(lines[:-1], "accuracy", True, BudgetConfig(patience=1))


def test_evaluate_every_measures_every_kth_round_the_first_and_the_last(job_factory):
    job = job_factory("sparse", federation__rounds=5, federation__evaluate_every=2)

    summary, _ = run_local(job)

    lines = _lines(job.run_dir)
    assert [line["round"] for line in lines if "test_accuracy" in line] == [0, 2, 4, 5]
    assert [line["round"] for line in lines if line.get("val")] == [2, 4, 5]
    assert summary["final_test_accuracy"] == lines[-1]["test_accuracy"]


def test_patience_without_validation_is_a_config_error():
    with pytest.raises(ConfigError, match=r"budget\.patience reads the validation metric"):
        load_job(None, ["budget.patience=3", "federation.fraction_evaluate=0"])
    with pytest.raises(ConfigError, match=r"data\.val_fraction=0 leaves the parties no validation split"):
        load_job(None, ["data.val_fraction=0"])


def test_the_byte_tokenizer_is_fixed_lossless_and_knows_every_byte():
    tokenizer = byte_tokenizer()
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET: ça va"

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    assert len(tokenizer) == 262 and len(ids) == len(text.encode())
    assert tokenizer.decode(ids) == text
    assert byte_tokenizer().get_vocab() == tokenizer.get_vocab()
    assert None not in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id)


def test_nanogpts_split_roles_whole_in_groups_and_the_parties_union_is_the_training_text():
    job = load_job(Path(__file__).resolve().parents[1] / "configs" / "shakespeare_char.yaml")
    source = load_source(job.data)
    full = "".join(source["text"])

    data = split_federated(source, job.data, job.federation.num_clients, job.seed)

    test_text = "".join(data.test["text"])
    train_chars = sum(len(t) for c in data.clients for t in c.train["text"])
    assert full.endswith(test_text) and abs(len(test_text) / len(full) - 0.1) < 0.001
    assert train_chars + len(test_text) == len(full)
    roles = [set(c.train["role"]) for c in data.clients]
    assert len(roles) == 8 and all(roles) and sum(map(len, roles)) == len(set().union(*roles))
    assert all(len(c.val) == 0 for c in data.clients)


def test_a_persistent_optimizer_stays_in_node_state_and_never_travels(job_factory):
    fresh, fresh_grid = run_local(job_factory("fresh"))
    kept, kept_grid = run_local(job_factory("kept", train__persistent_optimizer=True))

    assert kept["bytes_up"] == fresh["bytes_up"] and kept["bytes_down"] == fresh["bytes_down"]
    assert all(OPTIMIZER_KEY in ctx.state.array_records for ctx in kept_grid.contexts.values())
    assert not any(OPTIMIZER_KEY in ctx.state.array_records for ctx in fresh_grid.contexts.values())
    assert kept["final_test_loss"] != fresh["final_test_loss"]  # round 2 started from round 1's moments
