"""Benchmark, run by hand (not a test): federated pre-training from scratch vs centralized vs local-only.

`configs/gpt_shakespeare.yaml` (a small GPT from scratch, 8 parties = the 8 largest speaking roles of Tiny
Shakespeare) in the three modes on the same budget of local steps. Held-out perplexity (lower is better) per
round on the global test set (20% of every role's speeches), and each local-only model's own. Runs are cached
in --work (a run directory with summary.json is reused). Then the cost of federating it: tokens per second of
the federated rounds vs a bare PyTorch loop over the very same local steps (bench/overhead.py's measurement,
on a short version of the same job). Writes ``bench/results/pretraining.md`` + ``.png``.

Launch:  .venv/bin/python bench/pretraining.py [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from runs import REPO, metrics_lines, quiet_libraries, scratch_dir, set_threads, shown, torch_threads

MODES = ("federated", "centralized", "local")


def run(mode: str, args: argparse.Namespace) -> list[dict]:
    from ffm.config import load_job
    from ffm.runtime import run_local

    run_dir = args.work / f"gpt-{mode}"
    if not (run_dir / "summary.json").is_file():
        overrides = [f"mode={mode}", f"run_dir={run_dir}", "progress=false", *args.set]
        run_local(load_job(REPO / "configs" / "gpt_shakespeare.yaml", overrides + (["resume=true"] if run_dir.exists()
                                                                                    else [])))
    return metrics_lines(run_dir)


def measure_throughput(args: argparse.Namespace) -> dict:
    """Tokens per second: federated rounds (global evaluation excluded) vs the bare loop on the same batches."""
    from overhead import measure_overhead  # the same RoundClock timings and bare loop as the overhead table

    quiet_libraries()
    set_threads(args.threads)
    spec = argparse.Namespace(config=str(REPO / "configs" / "gpt_shakespeare.yaml"), clients=8, rounds=2,
                              local_steps=args.local_steps, max_examples=args.max_examples, test_fraction=0.2,
                              repeats=args.repeats, set=["checkpoint.keep_last=0",
                                                         "train.scheduler=constant", "train.warmup_ratio=0",
                                                         *args.set])
    with scratch_dir("ffm-pretraining-", keep=False) as scratch:
        measured = measure_overhead(spec, scratch)
    measured["threads"] = torch_threads()
    return measured


def throughput_section(m: dict) -> str:
    feds, bares = m["feds"], m["bares"]
    tokens = bares[0].tokens
    calls = sum(len(line["clients"]) for line in m["plan"])
    bare_tps = [tokens / b.steps for b in bares]
    fed_tps = [tokens / f.rounds for f in feds]
    inside = [f.rounds / (f.train_steps - min(b.cutting for b in bares)) for f in feds]
    runs = lambda xs, d=0: ", ".join(f"{x:,.{d}f}" for x in xs)  # noqa: E731
    return f"""## Tokens per second per client: federated rounds vs the bare training loop

Short job: the same config with `{' '.join(m['overrides'])}` (torch threads {m['threads']}): {calls} client
calls, {m['steps']} optimizer steps over {tokens:,} tokens. Federated = ServerApp + LocalGrid + ClientApp rounds,
the server's global evaluation excluded; bare = seed, AdamW, forward/backward/step over the same batches from
the same round-start states (largest loss difference per client call: {m['loss_diff']:.1e}). Runs alternate;
the best of each is compared.

| | tokens / s (best) | every run |
|---|---:|---|
| bare PyTorch loop | {max(bare_tps):,.0f} | {runs(bare_tps)} |
| federated rounds | {max(fed_tps):,.0f} | {runs(fed_tps)} |
| **overhead ratio** = bare / federated tokens per second | **{max(bare_tps) / max(fed_tps):.3f}** | |
| same ratio within each federated run (rounds / its own `train_steps`) | {min(inside):.3f} | {runs(inside, 3)} |
"""


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, lines in curves.items():
        rounds = [line["round"] for line in lines if line["round"] > 0]
        ax.plot(rounds, [line["test_perplexity"] for line in lines if line["round"] > 0], "-o", label=mode)
        if mode == "local":
            per_client = [line["test_perplexity_per_client"] for line in lines if line["round"] > 0]
            for pid in per_client[0]:
                ax.plot(rounds, [p[pid] for p in per_client], color="grey", alpha=0.35, lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out perplexity (log)")
    ax.set_title("GPT from scratch, Tiny Shakespeare by role (grey: each local-only model)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", nargs="*", default=[], help="more key=value overrides of the config")
    parser.add_argument("--work", type=Path, default=REPO / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pretraining.md")
    parser.add_argument("--local-steps", type=int, default=8, help="train.local_steps of the throughput job")
    parser.add_argument("--max-examples", type=int, default=4000, help="data.max_examples of the throughput job")
    parser.add_argument("--repeats", type=int, default=3, help="federated and bare runs each, throughput job")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the throughput job (0: default)")
    args = parser.parse_args()
    started = time.perf_counter()
    curves = {mode: run(mode, args) for mode in MODES}
    plot(curves, args.out.with_suffix(".png"))
    throughput = throughput_section(measure_throughput(args))
    rounds = max(line["round"] for line in curves["federated"])
    header = "| mode | " + " | ".join(f"round {r}" for r in range(rounds + 1)) + " |"
    rows = [f"| {mode} | " + " | ".join(f"{line['test_perplexity']:.1f}" for line in lines) + " |"
            for mode, lines in curves.items()]
    local_final = curves["local"][-1]["test_perplexity_per_client"]
    samples = (args.work / "gpt-federated" / "samples.jsonl").read_text().splitlines()
    text = f"""# Federated pre-training from scratch: GPT on Tiny Shakespeare by role

`{' '.join(['.venv/bin/python', 'bench/pretraining.py', *sys.argv[1:]])}` — {time.strftime('%Y-%m-%d')},
{time.perf_counter() - started:.0f} s to run what was not cached (runs cached in `{shown(args.work)}`).

Config `configs/gpt_shakespeare.yaml`: GPT-2 architecture from scratch (2 layers, width 128, 4 heads,
context 64; MiniLM's fixed public tokenizer, 4.3M parameters, full training), the 8 largest speaking roles as
8 parties (natural partition), FedAvg, {rounds} rounds of one local epoch, cosine schedule. Global held-out
set: 20% of every role's speeches (at most 20,000 tokens evaluated). Lower is better.

## Held-out perplexity per round

{header}
|{'---|' * (rounds + 2)}
{chr(10).join(rows)}

Local-only (mean above): each party's own model on the same global held-out set after the last round:
{', '.join(f"party {pid}: {value:.1f}" for pid, value in sorted(local_final.items(), key=lambda kv: int(kv[0])))}.

![perplexity per round]({args.out.with_suffix('.png').name})

Federated model's sample from the fixed prompt after the last round: `{json.loads(samples[-1])['text']}`

{throughput}"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
