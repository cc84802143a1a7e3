"""Benchmark, run by hand (not a test): federated pre-training from scratch vs centralized vs local-only.

`configs/gpt_shakespeare.yaml` (a small GPT from scratch, 8 parties = the 8 largest speaking roles of Tiny
Shakespeare) in the three modes on the same budget of local steps. Held-out perplexity (lower is better) per
round on the global test set (20% of every role's speeches), and each local-only model's own. Runs are cached
in --work (a run directory with summary.json is reused). Writes ``bench/results/pretraining.md`` + ``.png``.

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

REPO = Path(__file__).resolve().parent.parent
MODES = ("federated", "centralized", "local")


def run(mode: str, args: argparse.Namespace) -> list[dict]:
    from ffm.config import load_job
    from ffm.runtime import run_local

    run_dir = args.work / f"gpt-{mode}"
    if not (run_dir / "summary.json").is_file():
        overrides = [f"mode={mode}", f"run_dir={run_dir}", "progress=false", *args.set]
        run_local(load_job(REPO / "configs" / "gpt_shakespeare.yaml", overrides + (["resume=true"] if run_dir.exists()
                                                                                    else [])))
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


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


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", nargs="*", default=[], help="more key=value overrides of the config")
    parser.add_argument("--work", type=Path, default=REPO / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pretraining.md")
    args = parser.parse_args()
    started = time.perf_counter()
    curves = {mode: run(mode, args) for mode in MODES}
    plot(curves, args.out.with_suffix(".png"))
    rounds = max(line["round"] for line in curves["federated"])
    header = "| mode | " + " | ".join(f"round {r}" for r in range(rounds + 1)) + " |"
    rows = [f"| {mode} | " + " | ".join(f"{line['test_perplexity']:.1f}" for line in lines) + " |"
            for mode, lines in curves.items()]
    local_final = curves["local"][-1]["test_perplexity_per_client"]
    samples = (args.work / "gpt-federated" / "samples.jsonl").read_text().splitlines()
    text = f"""# Federated pre-training from scratch: GPT on Tiny Shakespeare by role

`{' '.join(['.venv/bin/python', 'bench/pretraining.py', *sys.argv[1:]])}` — {time.strftime('%Y-%m-%d')},
{time.perf_counter() - started:.0f} s to run what was not cached (runs cached in `{_shown(args.work)}`).

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
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
