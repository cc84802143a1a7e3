"""Benchmark, run by hand (not a test): what each method trains and sends, and the accuracy it reaches.

AG News with the real MiniLM, 10 Dirichlet(0.5) clients, FedAvg, the same budget as bench/strategies.py
(``--max-examples`` articles, ``--rounds`` rounds of ``--local-steps`` steps, every client every round).
Methods: full fine-tuning, LoRA r=4/8/16 (query/value), IA3, BitFit, prompt tuning and P-tuning. Prefix tuning
is left out: peft cannot put prefixes into transformers 5's BERT (it takes no past key values; ffm says so in
one line). Each method runs at one learning rate of the usual order for it (not tuned here: full 5e-5,
adapters 5e-3, IA3 and BitFit 1e-2, soft prompts 3e-2); the LoRA r=8 run is bench/strategies.py's ``a0.5-fedavg``
(same overrides), so pass the same --work to reuse it.

Writes ``bench/results/methods.md`` and ``methods.png`` (final accuracy vs MB sent, log scale).

Launch:  .venv/bin/python bench/methods.py [--work /tmp/stratbench] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runs import REPO, acc, budget, budget_parser, curve, mb, run_cached

LORA = ["method.name=lora", "method.targets=[query,value]"]
METHODS = {  # run name -> (label, overrides of configs/demo.yaml without its method section)
    "methods-full": ("full", ["method.name=full", "train.lr=5e-5"]),
    "methods-lora-r4": ("LoRA r=4", [*LORA, "method.r=4", "method.alpha=8"]),
    "a0.5-fedavg": ("LoRA r=8", [*LORA, "method.r=8", "method.alpha=16"]),
    "methods-lora-r16": ("LoRA r=16", [*LORA, "method.r=16", "method.alpha=32"]),
    "methods-ia3": ("IA3", ["method.name=ia3", "train.lr=1e-2"]),
    "methods-bitfit": ("BitFit", ["method.name=bitfit", "train.lr=1e-2"]),
    "methods-prompt-tuning": ("prompt tuning (20 tokens)", ["method.name=prompt_tuning", "train.lr=3e-2"]),
    "methods-p-tuning": ("P-tuning (20 tokens, MLP)", ["method.name=p_tuning", "train.lr=3e-2"]),
}


HEAD = ("| method | final test accuracy | parameters that travel | MB up / round (10 clients) | share of full's bytes "
        "| per round (0..R) |\n|---|---:|---:|---:|---:|---|")


def shared(args: argparse.Namespace) -> list[str]:
    """bench/strategies.py's budget at alpha 0.5, so that its a0.5-fedavg run is this LoRA r=8 run."""
    return [*budget(args), "data.alpha=0.5", "strategy.name=fedavg"]


def base_config(work: Path) -> Path:
    """configs/demo.yaml without its method section: each run names its method and that method's keys."""
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw.pop("method", None)
    path = work / "methods-base.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, res in results.items():
        if "error" in res:
            continue
        sent = (res["summary"]["bytes_up"] + res["summary"]["bytes_down"]) / 1e6
        ax.scatter(sent, res["summary"]["final_test_accuracy"], s=30)
        ax.annotate(METHODS[name][0], (sent, res["summary"]["final_test_accuracy"]), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("MB sent in the run (up + down, all clients), log scale")
    ax.set_ylabel("final test accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = budget_parser(__doc__.splitlines()[0], "methods.md")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config = base_config(args.work)
    with ThreadPoolExecutor(args.workers) as pool:
        done = pool.map(lambda n: run_cached(args.work, n, config, [*shared(args), *METHODS[n][1]],
                                             report_only=args.report_only), METHODS)
        results = dict(zip(METHODS, done, strict=True))
    plot(results, args.out.with_suffix(".png"))
    full = results["methods-full"]
    rows = []
    for name, res in results.items():
        label = METHODS[name][0]
        if "error" in res:
            rows.append(f"| {label} | {acc(res)} | | | | |")
            continue
        s = res["summary"]
        share = (s["bytes_up"] / full["summary"]["bytes_up"]) if "error" not in full else float("nan")
        rows.append(f"| {label} | {acc(res)} | {s['trainable_params']:,} | {mb(res, 'bytes_up')} | "
                    f"{share:.4%} | {curve(res)} |")
    text = f"""# Methods: accuracy vs bytes sent, AG News

`{' '.join(['.venv/bin/python', 'bench/methods.py', *sys.argv[1:]])}` — {time.strftime('%Y-%m-%d')},
{time.perf_counter() - started:.0f} s for what was not cached (runs in `{args.work}`), {args.workers} at a time.

Budget of every run: MiniLM (22.7M parameters), AG News subset of {args.max_examples} articles (20% the global
test set), 10 Dirichlet(0.5) clients all training every round, FedAvg, {args.rounds} rounds x {args.local_steps}
local steps, batch 16, AdamW, seed {args.seed}. One learning rate per method (see the script's docstring), one
seed: differences of a point or two are within noise.

{HEAD}
{chr(10).join(rows)}

Bytes down equal bytes up for every method here (the global state of the same keys goes down).
Prefix tuning is not in the table: peft cannot put prefixes into this BERT (transformers 5 gives it no past
key values), and ffm refuses it in one line; it runs on decoders (tests federate it on a Llama).

![accuracy vs MB sent]({args.out.with_suffix('.png').name})
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
