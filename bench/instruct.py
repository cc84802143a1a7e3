"""Benchmark, run by hand (not a test): federated instruction tuning and DPO of SmolLM2-135M-Instruct.

1. SFT (configs/instruct_agnews.yaml: "write a headline for this news story", 8 parties by topic): the
   zero-shot instruct model (every run's round 0), federated, centralized (the parties' union) and local-only
   (each party alone, the mean over parties), at the same local steps per round: ROUGE-L and exact match of
   greedy headlines on the held-out stories, response perplexity, bytes per round and in total (FlowerTune's
   communication column), wall time.
2. DPO (configs/dpo_agnews.yaml: chosen = the real headline, rejected = SmolLM2's own greedy headline) from the
   federated SFT run's adapter: federated, centralized, local-only; preference accuracy and reward margin on
   held-out pairs, and the ROUGE-L of generated headlines against the SFT model it started from.
3. Speed: tokens per second of one client's SFT steps against a bare PyTorch loop over the same batches (fp32
   and bf16 autocast), and the evaluation's generation against a bare ``model.generate`` loop over the same
   prompts and batches.

Runs are cached under runs/bench-instruct/ (a rerun does only what is new). Writes ``bench/results/instruct.md``
and ``instruct.png``.

Launch:  .venv/bin/python bench/instruct.py [--part sft,dpo,speed]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

from runs import REPO, run_cached

RESULTS = REPO / "bench" / "results"
WORK = REPO / "runs" / "bench-instruct"
SFT, DPO = REPO / "configs" / "instruct_agnews.yaml", REPO / "configs" / "dpo_agnews.yaml"
MODES = ("federated", "centralized", "local")
KEPT = RESULTS / "instruct-runs.json"  # the finished runs' summaries and metrics lines (run_cached's ``kept``)
SPEED = RESULTS / "instruct-speed.json"  # the speed part's last measurement (committed, as KEPT)


def _line(result: dict, key: str, at: int = -1) -> float | None:
    values = [line[key] for line in result.get("lines", []) if key in line]
    return values[at] if values else None


# twice the rounds (federated was still improving at round 8), scored on all 120 held-out stories (48 headlines
# were too coarse for the 1-point goal); local-only is not repeated (every party's model generates: hours)
LONG = ["federation.rounds=16", "federation.evaluate_every=4", "task.eval_generate=120"]


def sft_runs(only: set[str] | None, modes: tuple[str, ...] = MODES, suffix: str = "",
             keys: list[str] | tuple = ()) -> dict[str, dict]:
    """The SFT job in each of ``modes``, runs named sft-{mode}{suffix}, with ``keys`` on top of the config."""
    return {mode: run_cached(WORK, f"sft-{mode}{suffix}", SFT, [f"mode={mode}", *keys], threads=2, kept=KEPT,
                             report_only=only is not None and f"sft-{mode}{suffix}" not in only) for mode in modes}


# the shipped DPO config's learning rate (5e-5) against 10x higher, which separated the pairs by round 2 and then
# wrecked the headlines: alignment that breaks generation, as the issue asks the report to show
DPO_VARIANTS = {"federated, lr 5e-4": ("dpo-federated-lr5e-4", ["mode=federated", "train.lr=5e-4"])}


def dpo_runs(only: set[str] | None) -> dict[str, dict]:
    start = WORK / "sft-federated"
    runs = {mode: (f"dpo-{mode}", [f"mode={mode}"]) for mode in MODES} | DPO_VARIANTS
    return {label: run_cached(WORK, name, DPO, [*overrides, f"model.init_from={start}"], threads=2, kept=KEPT,
                              report_only=(only is not None and name not in only)
                              or not (start / "summary.json").is_file())
            for label, (name, overrides) in runs.items()}


def held_out_overlap() -> str:
    """How many of the DPO run's held-out stories the SFT run trained on: the two configs draw their stories from
    AG News independently, so a held-out pair can hold a story whose real headline the SFT model learned."""
    from ffm.config import load_job
    from ffm.data.partition import split_federated
    from ffm.data.sources import load_source

    def prompts(config: Path, field: str) -> tuple[set[str], set[str]]:
        job = load_job(str(config), [])
        data = split_federated(load_source(job.data), job.data, job.federation.num_clients, job.seed)
        trained = {m[0]["content"] for c in data.clients for part in (c.train, c.val) for m in part[field]}
        return trained, {m[0]["content"] for m in data.test[field]}

    sft_trained, _ = prompts(SFT, "messages")
    _, dpo_held_out = prompts(DPO, "prompt")
    return (f"{len(dpo_held_out & sft_trained)} of the {len(dpo_held_out)} held-out pairs' stories are among the "
            "SFT run's training stories (the two configs draw from AG News independently)")


def _table(results: dict[str, dict], metrics: list[tuple[str, str]], start: str) -> list[str]:
    """One row per mode, after a first row of round 0 (every run's initial model), labelled ``start``."""
    head = "| run | " + " | ".join(label for _, label in metrics) + \
        " | rounds | MB up / round | MB up total | wall s |"
    lines = [head, "| --- |" + " ---: |" * (len(metrics) + 4)]
    first = next((r for r in results.values() if "error" not in r), None)
    if first is not None:
        cells = [f"{_line(first, key, 0):.4f}" if _line(first, key, 0) is not None else "" for key, _ in metrics]
        lines.append(f"| {start} (round 0) | " + " | ".join(cells) + " | 0 | 0 | 0 | |")
    for mode, result in results.items():
        if "error" in result:
            lines.append(f"| {mode} | {result['error'][:60]} |" + " |" * (len(metrics) + 3))
            continue
        s = result["summary"]
        cells = [f"{_line(result, key):.4f}" if _line(result, key) is not None else "" for key, _ in metrics]
        per_round = s["bytes_up"] / max(1, s["rounds"]) / 1e6
        # local-only exchanges nothing in a deployment: the simulation carries each party's own model back to it,
        # which its summary counts, but no party learns from another's bytes
        traffic = "- | -" if mode == "local" else f"{per_round:.2f} | {s['bytes_up'] / 1e6:.1f}"
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {s['rounds']} | {traffic} | "
                     f"{s['wall_time_s']:.0f} |")
    return lines


def _kept_note(*parts: dict[str, dict]) -> list[str]:
    names = [r["name"] for results in parts for r in results.values() if r.get("kept")]
    bare = {r["name"]: r["recorded_from"] for results in parts for r in results.values() if r.get("recorded_from")}
    if not names:
        return []
    return [f"Reported from `{KEPT.relative_to(REPO)}` (the finished runs' summaries and per-round metrics, kept "
            f"because `runs/` is not committed; same config and overrides), not rerun here: {', '.join(names)}."
            + "".join(f" {name} was recorded there from {source}." for name, source in bare.items()), ""]


def _goals_sft(results: dict[str, dict]) -> list[str]:
    fed, central, local = (results.get(m, {"error": "not run"}) for m in MODES)
    if "error" in fed:
        return ["- not run"]
    zero, federated = _line(fed, "test_rougeL", 0), _line(fed, "test_rougeL")
    out = [f"- federated ROUGE-L at least 10 points above the zero-shot model: "
           f"**{'met' if federated - zero >= 0.10 else 'not met'}** ({100 * federated:.1f} vs {100 * zero:.1f}, "
           f"{100 * (federated - zero):+.1f} points)."]
    if "error" not in central:
        gap = 100 * (federated - _line(central, "test_rougeL"))
        out.append("- federated within 1 point of centralized on the same tokens: "
                   f"**{'met' if gap >= -1 else 'not met'}** ({gap:+.1f} points).")
    if "error" not in local:
        below = _line(local, "test_rougeL") < federated
        out.append(f"- local-only below federated: **{'met' if below else 'not met'}** "
                   f"({100 * _line(local, 'test_rougeL'):.1f}).")
    return out


def _goals_dpo(results: dict[str, dict]) -> list[str]:
    out = []
    for label in ("federated", *DPO_VARIANTS):
        run = results[label]
        if "error" in run:
            out.append(f"- {label}: not run")
            continue
        accuracy = _line(run, "test_preference_accuracy")
        # round 0 is the SFT model (model.init_from) on the DPO run's own held-out stories; the SFT run's final
        # ROUGE-L is over other stories (its own test set) and not comparable
        drop = 100 * (_line(run, "test_rougeL", 0) - _line(run, "test_rougeL"))
        out += [f"- {label}: preference accuracy at least 0.90 on held-out pairs: "
                f"**{'met' if accuracy >= 0.9 else 'not met'}** ({accuracy:.3f}); ROUGE-L no more than 1 point below "
                f"the SFT model it started from (round 0, same stories): **{'met' if drop <= 1 else 'not met'}** "
                f"({-drop:+.1f} points)."]
    return out


SFT_READING = [
    "Reading (runs of 2026-11-30; the curves in the plot below):",
    "- On 2026-12-01 the federated and centralized runs were made again on a fresh checkout (its `runs/` had "
    "gone) and gave the same figures to four places (federated perplexity 20.9122 against 20.9121; centralized "
    "ROUGE-L 0.2265 and perplexity 17.5536, as before) in 1,136 s and 2,328 s against 767 s and 944 s (the machine "
    "ran about 1.5x slower that day, and the centralized run shared its 2 cores with another job for about a "
    "quarter of its time: its wall time is not comparable). The local-only row is the run of 2026-11-30, recorded "
    "from that day's report (final figures only, no curve).",
    "- Every tuned model writes better headlines than the zero-shot one (ROUGE-L 0.172, perplexity 51.3 on the "
    "held-out headlines): federated 0.208 (0.230 at round 4), centralized 0.227 (0.261 at round 6), each party "
    "alone 0.208 on average (0.173 to 0.239 over the 8 parties). None writes a headline exactly as the paper "
    "did (exact match 0 everywhere): a story's description does not determine its headline's wording.",
    "- ROUGE-L over 48 generated headlines is too coarse for the 1-point goals: centralized moves 3.4 points "
    "between rounds 6 and 8 while its response perplexity moves 0.6% (17.66 to 17.55). The perplexity over all "
    "held-out headlines separates the modes: centralized 17.6, federated 20.9 (19% higher), local-only 29.0. "
    "Local-only is below federated on perplexity and level on ROUGE-L (0.2080 against 0.2078); each party "
    "alone overfits its own stories (the mean perplexity rises after round 4: 26.3, 27.0, 29.0).",
    "- The runs are not converged alike: centralized's perplexity has flattened (17.99, 17.66, 17.55 at rounds "
    "4, 6, 8), federated's still falls about 5% every two rounds (23.40, 21.98, 20.91) after 8 rounds on the "
    "same 512 steps and 195k tokens.",
    "- What would close the gaps and settle the goals: more rounds for federated (stopped at its plateau, as the "
    "classification studies are), ROUGE-L on more held-out stories (`task.eval_generate` 240 instead of 48: "
    "the evaluation's generation is most of the local-only run's 2,040 s, every party's model generating), "
    "and more than one seed. The +10-point goal may not be reachable on this task: the best round of any "
    "run (centralized, round 6) is +8.9.",
]


def speed(args: argparse.Namespace) -> dict[str, list]:
    """ffm's client steps and evaluation against bare loops over the same inputs (one warm process): the table's
    lines, and each row's (what, ffm time / bare time, the goal's limit) for the goals."""
    import shutil

    import torch

    from ffm.config import load_job
    from ffm.local_training import make_optimizer, train_steps
    from ffm.tasks import step_batches
    from ffm.tasks.generation import generate
    from ffm.workspace import workspace_for

    job = load_job(SFT, ["federation.num_clients=8", f"run_dir={WORK / 'speed'}", "progress=false"])
    shutil.rmtree(WORK / "speed", ignore_errors=True)
    ws = workspace_for(job)
    data = ws.examples("train", 0)
    steps, batch = args.steps, job.train.batch_size
    rows, ratios = [], []
    for bf16 in (False, True):
        batches = list(step_batches(data, batch, steps + 2, torch.Generator().manual_seed(0)))
        tokens = sum(int(b["attention_mask"].sum()) for b in batches[2:])
        ws.load(ws.initial_state)
        optimizer = make_optimizer(ws.model, 1e-3, 0.0)
        ws.model.train()
        for b in batches[:2]:  # warm-up
            ws.task.loss(ws.model, b).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        for b in batches[2:]:
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                loss = ws.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        bare = tokens / (time.perf_counter() - start)
        ws.load(ws.initial_state)
        optimizer = make_optimizer(ws.model, 1e-3, 0.0)
        start = time.perf_counter()
        train_steps(ws.model, batches[2:], objective=ws.task.loss, optimizer=optimizer, bf16=bf16)
        ours = tokens / (time.perf_counter() - start)
        name = "bf16 autocast" if bf16 else "fp32"
        rows.append(f"| training, {name} | {bare:.0f} | {ours:.0f} | {bare / ours:.3f} |")
        ratios.append((f"training, {name}", bare / ours, 1.05))
    test = ws.examples("test")
    count = min(len(test), job.task.eval_generate)
    prompts = [test.tensors["prompt_ids"][i, : int(test.tensors["prompt_lengths"][i])].tolist() for i in range(count)]
    ws.load(ws.initial_state)
    started = time.perf_counter()
    replies = generate(ws.model, ws.tokenizer, prompts, max_new_tokens=job.task.max_new_tokens,
                       batch_size=job.train.eval_batch_size)
    ours_s = time.perf_counter() - started
    new_tokens = sum(len(ws.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)
    started = time.perf_counter()  # the bare loop: the same batches (ffm's order), left-padded, model.generate
    order = sorted(range(count), key=lambda i: len(prompts[i]))
    pad = ws.tokenizer.pad_token_id
    with torch.inference_mode():
        for s in range(0, count, job.train.eval_batch_size):
            rows_ = order[s: s + job.train.eval_batch_size]
            width = max(len(prompts[i]) for i in rows_)
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in rows_])
            mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(prompts[i]) for i in rows_])[:, None])
            ws.model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=job.task.max_new_tokens,
                              do_sample=False, pad_token_id=pad)
    bare_s = time.perf_counter() - started
    what = f"evaluation generation ({count} prompts, at most {job.task.max_new_tokens} new tokens)"
    rows.append(f"| {what} | {new_tokens / bare_s:.1f} | {new_tokens / ours_s:.1f} | {ours_s / bare_s:.3f} |")
    ratios.append((what, ours_s / bare_s, 1.1))
    lines = ["## Speed: ffm against bare loops on the same inputs", "",
            f"One client's SFT batches (batch {batch}, {steps} steps after 2 warm-up steps) and the test set's "
            f"generation, SmolLM2-135M-Instruct + LoRA r=8 on q/v, {torch.get_num_threads()} torch threads, one "
            "warm process, one after the other. Goals: training at most 1.05x the bare loop's time per token, "
            "evaluation at most 1.1x.", "",
            "| what | bare tokens / s | ffm tokens / s | ffm time / bare time |", "| --- | ---: | ---: | ---: |",
            *rows, ""]
    return {"lines": lines, "ratios": ratios}


DPO_READING = [
    "Reading (runs of 2026-12-01, federated only; the curves in the plot below):",
    "- At the shipped learning rate (5e-5) federated DPO separates the held-out pairs by round 2 (accuracy 0.988, "
    "margin 0.39) and its headlines do not get worse: ROUGE-L 0.219, 0.202, 0.198 at rounds 2, 4, 6 against the SFT "
    "model's 0.190 (round 0, the same 48 stories), the margin growing slowly (0.39, 0.80, 1.29). Both DPO goals are "
    "met at round 6 (accuracy 0.988, ROUGE-L +0.8 points; 3,192 s), but ROUGE-L has fallen since round 2: at this "
    "rate a few more rounds would likely cross the 1-point line, so round 6 is about where to stop.",
    "- At 10x that rate (5e-4, the config's first setting) the pairs separate as fast (1.000 at round 2) and the "
    "margin keeps growing (5.7, 11.6, 18.0 at rounds 2, 4, 6) while generation collapses: ROUGE-L 0.126, 0.061, "
    "0.012; the replies shrink to fragments (\"Olympics test heavylights\" at round 2, \"lies\" and \")|\" at "
    "round 6). Preference accuracy alone cannot see it; the ROUGE-L beside it does, and the config now ships the "
    "lower rate.",
    "- Why the pairs are easy: the rejected replies are the zero-shot model's own greedy headlines (long, in its "
    "style: \"A New Kid on the Block Promises to Give Offshore Outsourcing a Run\"), the chosen ones the paper's. "
    "A run that pushes every reply away from that style wins on the pairs whatever it writes.",
    "- Caveats: one seed; ROUGE-L over 48 headlines moves a few points between evaluations (see SFT); the held-out "
    "pairs share some stories with the SFT run's training data (the count is above). Centralized and local-only "
    "DPO have not run (each takes about as long as a federated run, 46 to 53 minutes on 2 cores: every step runs "
    "the policy and the reference over both replies, 12 s a step).",
]


SFT_LONG_READING = [
    "Reading (runs of 2026-12-02, one seed):",
    "- With twice the rounds federated keeps learning: its response perplexity falls 23.40, 20.91, 19.73, 18.75 at "
    "rounds 4, 8, 12 and 16 (5% in the last four rounds), on twice the steps and tokens of the 8-round runs, and "
    "is still above the 8-round centralized run's 17.55.",
    "- ROUGE-L over all 120 held-out headlines is still a noisy yardstick: 0.223, 0.219, 0.205 and 0.251 at rounds "
    "4 to 16 while the perplexity falls steadily. At round 16 it is 8.2 points above the zero-shot model (0.168 "
    "on the same 120 stories): the +10-point goal is not met.",
    "- Centralized on the same steps and tokens overfits after round 8: its perplexity 17.99, 17.55, 19.23, 20.81 "
    "at rounds 4 to 16, while its ROUGE-L rises (0.236, 0.240, 0.251, 0.264). At round 16 federated is 1.3 ROUGE-L "
    "points below it (the goal, within 1, not met) and has the lower response perplexity (18.75 against 20.81): "
    "the parties' averaged steps overfit less than one model taking them all. Which metric to stop on decides "
    "the comparison: at centralized's best perplexity (round 8) federated is 3.4 points of perplexity and 2.1 "
    "points of ROUGE-L behind it.",
]


def _goals_speed(ratios: list[tuple[str, float, float]]) -> list[str]:
    """The speed goals marked from each row's ffm time / bare time."""
    out = [f"- {what}: at most {limit}x the bare loop's time: **{'met' if ratio <= limit else 'not met'}** "
           f"({ratio:.3f}x)." for what, ratio, limit in ratios]
    return ["Goals:", *out, ""] if out else []


def plot(sft: dict[str, dict], dpo: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(22, 4.5))
    for ax, results, key, title in ((axes[0], sft, "test_rougeL", "SFT: ROUGE-L of generated headlines"),
                                    (axes[1], sft, "test_perplexity", "SFT: held-out response perplexity"),
                                    (axes[2], dpo, "test_preference_accuracy", "DPO: held-out preference accuracy"),
                                    (axes[3], dpo, "test_rougeL", "DPO: ROUGE-L of generated headlines")):
        for mode, result in results.items():
            if "error" in result:
                continue
            points = [(line["round"], line[key]) for line in result["lines"] if key in line]
            ax.plot([p[0] for p in points], [p[1] for p in points], "-o", ms=3, label=mode)
        ax.set_title(title if ax.lines else f"{title}: not run")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="sft,dpo,speed")
    parser.add_argument("--only", help="comma-separated run names to run now (the others: reported if done)")
    parser.add_argument("--steps", type=int, default=40, help="speed: timed training steps")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    parts = set(args.part.split(","))
    only = set(args.only.split(",")) if args.only else None
    sft = sft_runs(only if "sft" in parts else set())  # a part not asked for: its finished runs are reported
    sft_long = sft_runs(only if "sft" in parts else set(), ("federated", "centralized"), "-r16", LONG)
    dpo = dpo_runs(only if "dpo" in parts else set())
    plot(sft | {f"{mode}, 16 rounds": r for mode, r in sft_long.items()}, dpo, RESULTS / "instruct.png")
    cached = SPEED  # the speed part's last measurement, reported when it does not run
    measured_speed = speed(args) if "speed" in parts else None
    if measured_speed:
        cached.write_text(json.dumps(measured_speed))
    elif cached.is_file():
        measured_speed = json.loads(cached.read_text())
    speed_lines, ratios = (measured_speed["lines"], measured_speed["ratios"]) if measured_speed else ([], [])
    if measured_speed and measured_speed.get("recorded_from"):
        speed_lines = [*speed_lines, f"Recorded from {measured_speed['recorded_from']}.", ""]
    lines = [
        "# Federated instruction tuning and DPO of SmolLM2-135M-Instruct", "",
        "`.venv/bin/python bench/instruct.py`. SmolLM2-135M-Instruct + LoRA (r=8 on q/v), AG News turned into "
        "instruction pairs (derived: the story's description as the prompt, its real title as the headline to "
        "write; ffm/data/chat.py), 8 parties split by topic (Dirichlet 0.3 over the 4 sections), held-out stories "
        "no party holds. Every mode takes the same local steps per round (centralized: one party holding the "
        "union). Metrics on the held-out stories: ROUGE-L and exact match of greedy headlines (the first "
        "`task.eval_generate` stories), the responses' perplexity. One seed; runs in `runs/bench-instruct/`.", "",
        *_kept_note(sft, sft_long, dpo),
        "## Supervised fine-tuning (configs/instruct_agnews.yaml)", "",
        *_table(sft, [("test_rougeL", "ROUGE-L"), ("test_exact_match", "exact match"),
                      ("test_perplexity", "response perplexity")], start="zero-shot"), "",
        "Goals:", *_goals_sft(sft), "", *(SFT_READING if "error" not in sft["federated"] else []), "",
        "### 16 rounds, ROUGE-L over all 120 held-out stories", "",
        "The same job with twice the rounds (`" + " ".join(LONG) + "`); its round 0 is scored on the 120 "
        "stories too, so it differs from the table above.", "",
        *_table(sft_long, [("test_rougeL", "ROUGE-L"), ("test_exact_match", "exact match"),
                           ("test_perplexity", "response perplexity")], start="zero-shot"), "",
        "Goals:", *_goals_sft(sft_long), "", *(SFT_LONG_READING if "error" not in sft_long["federated"] else []),
        "",
        "## DPO from the federated SFT adapter (configs/dpo_agnews.yaml)", "",
        "Rejected replies are SmolLM2's own greedy headlines (generated once, cached); the reference is the SFT "
        f"model (the run's initial adapter). {held_out_overlap()}.", "",
        *_table(dpo, [("test_preference_accuracy", "preference accuracy"), ("test_reward_margin", "reward margin"),
                      ("test_rougeL", "ROUGE-L")], start="the SFT model"), "",
        "Goals:", *_goals_dpo(dpo), "", *(DPO_READING if "error" not in dpo["federated"] else []), "",
        *speed_lines, "", *_goals_speed(ratios),
        "![SFT's ROUGE-L and response perplexity, DPO's preference accuracy and ROUGE-L, per round](instruct.png)", ""]
    (RESULTS / "instruct.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
