"""Local training: the run-long learning-rate schedule, gradient clipping and the penalty hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import get_scheduler

from ffm.local_training import TokenCount, lr_factor, make_optimizer, run_scheduler, train_steps


@pytest.mark.parametrize(("kind", "hf_name"), [("linear", "linear"), ("cosine", "cosine"),
                                               ("constant", "constant_with_warmup")])
def test_schedule_follows_transformers_formulas(kind, hf_name):
    total, warmup = 20, 4
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_scheduler(hf_name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    expected = []
    for _ in range(total):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()

    assert [lr_factor(step, total, warmup, kind) for step in range(total)] == pytest.approx(expected)


def test_each_round_continues_the_run_long_schedule_where_the_last_round_ended():
    steps, rounds = 5, 3
    seen = []
    for server_round in range(1, rounds + 1):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = run_scheduler(optimizer, kind="linear", warmup_ratio=0.2, steps=steps,
                                  server_round=server_round, rounds=rounds)
        for _ in range(steps):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()

    assert seen == pytest.approx([0.1 * lr_factor(i, steps * rounds, 3, "linear") for i in range(steps * rounds)])
    assert seen[0] == 0.0 and max(seen) == pytest.approx(0.1) and seen[-1] < seen[5]


def _toy(seed: int = 0) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 1)
    batches = [{"x": torch.randn(8, 4) * 100, "y": torch.randn(8, 1)} for _ in range(3)]
    return model, batches


def _mse(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def test_max_grad_norm_bounds_every_sgd_step():
    model, batches = _toy()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)

    train_steps(model, batches[:1], objective=_mse, optimizer=optimizer, max_grad_norm=0.5)

    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert float(moved) == pytest.approx(0.5, rel=1e-4)  # the raw gradient is far larger (inputs ~100)


def test_a_penalty_changes_the_update_but_not_the_reported_loss():
    plain, batches = _toy()
    penalized, _ = _toy()
    anchor = [p.detach().clone() for p in penalized.parameters()]

    def pull() -> torch.Tensor:
        return 1e6 * sum(((p - a) ** 2).sum() for p, a in zip(penalized.parameters(), anchor, strict=True))

    # Two steps: the penalty is zero (and so is its gradient) at the first, where both start from the anchor.
    loss_a, seen_a = train_steps(plain, batches[:2], objective=_mse, optimizer=make_optimizer(plain, 0.1, 0.0))
    loss_b, seen_b = train_steps(penalized, batches[:2], objective=_mse, optimizer=make_optimizer(penalized, 0.1, 0.0),
                                 penalties=[pull])

    assert (loss_a, seen_a) == (loss_b, seen_b) == (loss_a, 16)  # both losses before either step differs
    assert not torch.equal(plain.weight, penalized.weight)


def test_grad_hooks_run_after_backward_and_before_the_step():
    model, batches = _toy()
    norms = []
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    train_steps(model, batches, objective=_mse, optimizer=optimizer,
                grad_hooks=[lambda m: norms.append(float(m.weight.grad.norm()))])

    assert len(norms) == 3 and all(n > 0 for n in norms)


def test_bf16_precision_runs_the_forward_under_autocast_and_keeps_fp32_weights():
    from ffm.local_training import make_optimizer, train_steps

    model = torch.nn.Linear(4, 2)
    seen = []

    def objective(m, batch):
        out = m(batch["x"])
        seen.append(out.dtype)
        return out.float().pow(2).mean()

    batches = [{"x": torch.randn(3, 4)} for _ in range(2)]
    train_steps(model, batches, objective=objective, optimizer=make_optimizer(model, 0.1, 0.0), bf16=True)
    train_steps(model, batches, objective=objective, optimizer=make_optimizer(model, 0.1, 0.0))
    assert seen == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    assert model.weight.dtype == torch.float32


def test_tokens_seen_counts_mask_ones_and_both_sides_of_a_preference_pair():
    """The reported tokens are what the model read: a pair's chosen and rejected replies both, not the pairs."""
    single = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1, 0],
                                                                                                [1, 1, 0, 0]])}
    pairs = {"chosen_input_ids": torch.zeros(2, 3, dtype=torch.long),
             "chosen_attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
             "rejected_input_ids": torch.zeros(2, 5, dtype=torch.long),
             "rejected_attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])}
    images = {"pixel_values": torch.zeros(3, 1, 8, 8), "labels": torch.zeros(3, dtype=torch.long)}
    counted = TokenCount([single, pairs, images])
    assert len(list(counted)) == 3
    assert counted.tokens == 5 + (4 + 7) + 3
