"""Benchmark, run by hand (not a test): SmolLM2-135M + LoRA training steps on CPU, and ffm's overhead.

One client's local steps on packed BBC News blocks (configs/smollm2_continue.yaml: 32-token blocks, batch 4,
LoRA r=8 on q/v). Tokens per second of a bare PyTorch loop (forward, backward, AdamW step) under each setting:
fp32; bf16 autocast (this CPU has avx512_bf16); gradient checkpointing; both; torch.compile. Then the same
steps as an ffm client (the ClientApp on the LocalGrid: receive the state, train, reply) against the bare
loop: the overhead ratio. Sequence packing is ffm's default for language models (text_blocks.py), so every
setting here is packed.

Writes ``bench/results/causal_speed.md``.

Launch:  .venv/bin/python bench/causal_speed.py [--steps 12] [--block 64] [--batch 4]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from pathlib import Path

import torch

from ffm.config import load_job
from ffm.local_training import make_optimizer
from ffm.runtime import run_local
from ffm.tasks import step_batches
from ffm.workspace import workspace_for

REPO = Path(__file__).resolve().parent.parent


def _job(args: argparse.Namespace, run_dir: Path, extra: list[str] = ()):
    return load_job(REPO / "configs" / "smollm2_continue.yaml", [
        f"model.max_length={args.block}", f"train.batch_size={args.batch}", f"train.local_steps={args.steps}",
        "federation.num_clients=1", "federation.rounds=1", "data.partitioner=iid", "task.eval_tokens=256",
        "task.sample_tokens=0", f"run_dir={run_dir}", "progress=false", *extra])


def bare(ws, args: argparse.Namespace, *, bf16: bool, checkpointing: bool, compiled: bool, warmup: int = 2) -> float:
    """Tokens per second of the bare loop over ``args.steps`` steps (after ``warmup`` more)."""
    model = ws.model
    ws.load(ws.initial_state)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    forward = torch.compile(model) if compiled else model
    data = ws.examples("train", 0)
    optimizer = make_optimizer(model, 1e-3, 0.0)
    batches = list(step_batches(data, args.batch, args.steps + warmup, torch.Generator().manual_seed(0)))
    model.train()
    tokens, seconds = 0, 0.0
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = ws.task.loss(forward, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            seconds += time.perf_counter() - start
            tokens += int(batch["attention_mask"].sum())
    model.gradient_checkpointing_disable()
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-causal-speed")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "causal_speed.md")
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ws = workspace_for(_job(args, args.work / "bare"))
    settings = {"fp32": {}, "bf16 autocast": {"bf16": True}, "gradient checkpointing": {"checkpointing": True},
                "bf16 + checkpointing": {"bf16": True, "checkpointing": True}}
    if not args.skip_compile:
        settings["torch.compile"] = {"compiled": True}
    rows = []
    for name, flags in settings.items():
        try:
            rate = bare(ws, args, **{"bf16": False, "checkpointing": False, "compiled": False, **flags})
            rows.append((name, rate))
        except Exception as exc:  # a setting this machine cannot run is reported, not hidden
            rows.append((name, f"failed: {type(exc).__name__}: {str(exc)[:80]}"))
        print(rows[-1], flush=True)
    base = rows[0][1]
    # ffm's client: the same steps through the ClientApp on the LocalGrid (its seconds as the grid counts them)
    clients = {}
    for precision in ("fp32", "bf16"):  # the process is warm: the bare reference counts every step, as ffm does
        shutil.rmtree(args.work / f"ffm-{precision}", ignore_errors=True)
        reference = bare(ws, args, bf16=precision == "bf16", checkpointing=False, compiled=False, warmup=0)
        _, grid = run_local(_job(args, args.work / f"ffm-{precision}", [f"train.precision={precision}"]))
        clients[precision] = (reference, args.steps * args.batch * args.block / grid.client_seconds)
    lines = ["# SmolLM2-135M + LoRA: training steps on CPU", "",
             f"Measured by `bench/causal_speed.py` (one client, {args.steps} steps of batch {args.batch} x "
             f"{args.block}-token packed blocks, LoRA r=8 on q/v; {torch.get_num_threads()} torch threads). "
             "Tokens per second of a bare PyTorch loop, after 2 warm-up steps; one run each, one after the other.", "",
             "| setting | tokens / s | vs fp32 |", "|---|---:|---:|"]
    for name, rate in rows:
        lines.append(f"| {name} | {rate:.0f} | {rate / base:.2f}x |" if isinstance(rate, float) else
                     f"| {name} | {rate} | |")
    lines += ["", "## ffm's overhead", "",
              f"The same {args.steps} steps as an ffm client (receive the global state, load it, train, take the "
              "trainable state, reply) on the LocalGrid, against the bare loop over the same steps measured right "
              "before it in the same warm process (ffm's time is everything the client does, message in to reply "
              "out; `train.precision` picks the autocast):", "",
              "| precision | bare tokens / s | ffm client tokens / s | overhead (bare / ffm) |", "|---|---:|---:|---:|"]
    for precision, (reference, ffm_rate) in clients.items():
        lines.append(f"| {precision} | {reference:.0f} | {ffm_rate:.0f} | {reference / ffm_rate:.3f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
