"""Benchmark, run by hand (not a test): speed and memory at scale (issue: every core, streaming, compression).

Sections (``--only`` picks some; each run is cached in --work by name); the worker processes are measured by
bench/peer.py, beside Flower's Simulation Engine:

- ``memory``: full fine-tuning of MiniLM, 1 round x 1 step, 10 / 50 / 100 clients per round, list vs
  streaming aggregation: peak PSS;
- ``compression``: AG News with LoRA (bench/strategies.py's budget): bytes up and final accuracy per codec.

Writes ``bench/results/scale.md`` and ``scale.png``.

Launch:  .venv/bin/python bench/scale.py [--only memory,compression] [--work runs/bench-scale]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runs import DEMO, REPO, budget, budget_parser, measured, run_cached, without_method


def memory_section(work: Path) -> tuple[list[str], dict]:
    job = ["method.name=full", "train.lr=5e-5", "model.max_length=32", "train.batch_size=4", "train.local_steps=1",
           "federation.rounds=1", "federation.fraction_evaluate=0", "data.partitioner=iid"]
    rows = ["## Memory vs clients per round: full fine-tuning of MiniLM, list vs streaming aggregation", "",
            "One round of one local step per client (the peak is the aggregation's: every reply is a full 22.7M-"
            "parameter state); peak PSS of the process.", "",
            "| clients per round | list MiB | streaming MiB | wall s (list, streaming) |", "|---:|---:|---:|---|"]
    curves: dict = {"list": [], "streaming": []}
    for clients in (10, 50, 100):
        got = {}
        for mode, flag in (("list", "false"), ("streaming", "true")):
            got[mode] = measured(work, f"memory-{mode}-{clients}",
                                  [*job, f"federation.num_clients={clients}", f"federation.streaming={flag}"],
                                  without_method(DEMO, work))
            curves[mode].append((clients, got[mode]["peak_pss_mib"]))
        rows.append(f"| {clients} | {got['list']['peak_pss_mib']} | {got['streaming']['peak_pss_mib']} | "
                    f"{got['list']['seconds']}, {got['streaming']['seconds']} |")
    return rows, curves


CODEC_RUNS = {"none": [], "int8": ["client.compression=int8"], "int4": ["client.compression=int4"],
              "topk-10%": ["client.compression=topk", "client.topk_fraction=0.1"], "fp16": ["client.compression=fp16"],
              "int8-no-feedback": ["client.compression=int8", "client.error_feedback=false"]}


def compression_section(work: Path, args: argparse.Namespace) -> tuple[list[str], dict]:
    shared = [*budget(args), "data.alpha=0.5", "strategy.name=fedavg", "method.name=lora", "method.r=8",
              "method.alpha=16", "method.targets=[query,value]"]
    rows = ["## Compressed updates: AG News, MiniLM + LoRA r=8 (bench/strategies.py's budget, alpha 0.5)", "",
            "Bytes up are counted as they travel (encoded); error feedback on unless named.", "",
            "| codec | MB up / round | fewer bytes than none | final test accuracy | vs none (points) |",
            "|---|---:|---:|---:|---:|"]
    chosen = [c for c in args.codecs.split(",") if c] or list(CODEC_RUNS)
    results = {name: run_cached(work, f"codec-{name}", DEMO, [*shared, *CODEC_RUNS[name]]) for name in chosen}
    base = results["none"].get("summary")
    points = {}
    for name, r in results.items():
        if "summary" not in r or base is None:
            rows.append(f"| {name} | failed | | | |")
            continue
        s = r["summary"]
        up = s["bytes_up"] / max(1, s["rounds"]) / 1e6
        points[name] = (base["bytes_up"] / s["bytes_up"], s["final_test_accuracy"])
        rows.append(f"| {name} | {up:.3f} | {base['bytes_up'] / s['bytes_up']:.2f}x | {s['final_test_accuracy']:.4f} | "
                    f"{100 * (s['final_test_accuracy'] - base['final_test_accuracy']):+.1f} |")
    return rows, points


def plot(curves: dict, points: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode, values in curves.items():
        if values:
            axes[0].plot(*zip(*values, strict=True), marker="o", label=mode)
    axes[0].set(xlabel="clients per round", ylabel="peak PSS (MiB)", title="full fine-tuning: memory vs clients")
    axes[0].legend()
    named: dict[tuple[float, float], list[str]] = {}  # codecs that land on the same point share one label
    for name, point in points.items():
        named.setdefault(point, []).append(name)
    for (ratio, acc), names in named.items():
        axes[1].scatter(ratio, acc)
        axes[1].annotate(", ".join(names), (ratio, acc), fontsize=8, xytext=(3, 3), textcoords="offset points")
    axes[1].set(xscale="log", xlabel="x fewer bytes up than uncompressed", ylabel="final test accuracy",
                title="compressed updates (AG News, LoRA)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sections(text: str) -> dict[str, list[str]]:
    """The ``## `` sections of a results file, by heading, in order (trailing blank lines dropped)."""
    sections: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("## "):
            sections[line] = []
        if sections:
            sections[next(reversed(sections))].append(line)
    return {heading: "\n".join(block).rstrip().splitlines() for heading, block in sections.items()}


def _put(sections: dict[str, list[str]], rows: list[str]) -> None:
    sections[rows[0]] = rows  # replaces the section of that heading in place, or appends it


def _memory_curves(sections: dict[str, list[str]]) -> dict:
    """The memory section's curves as an earlier run wrote them (the plot shows them when it is not re-run)."""
    curves: dict = {"list": [], "streaming": []}
    for heading, block in sections.items():
        if heading.startswith("## Memory vs clients"):
            for line in block:
                cells = [c.strip() for c in line.strip("|").split("|")]
                if len(cells) >= 3 and cells[0].isdigit():
                    curves["list"].append((int(cells[0]), int(cells[1])))
                    curves["streaming"].append((int(cells[0]), int(cells[2])))
    return curves


def main() -> None:
    parser = budget_parser(__doc__.splitlines()[0], "scale.md")
    parser.set_defaults(work=REPO / "runs" / "bench-scale")
    parser.add_argument("--only", default="memory,compression")
    parser.add_argument("--codecs", default="", help="compression: these codecs only, comma-separated (default: all)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    header = ["# Speed and scale", "", "Measured by `bench/scale.py` on this machine (one run each; ratios within a "
              "section come from runs made one after the other).", ""]
    sections = _sections(args.out.read_text()) if args.out.is_file() else {}  # the sections not re-run stay
    curves, points = _memory_curves(sections), {}
    if "memory" in only:
        rows, curves = memory_section(args.work)
        _put(sections, rows)
    if "compression" in only:
        rows, points = compression_section(args.work, args)
        _put(sections, rows)
    args.out.write_text("\n".join([*header, *(line for block in sections.values() for line in [*block, ""])]))
    plot(curves, points, args.out.with_suffix(".png"))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
