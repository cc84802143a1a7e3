"""Instruction and preference data: the formats users already have, read into chat messages.

Supervised fine-tuning examples become a ``messages`` column (a list of ``{role, content}``), from any of:

- Alpaca rows: ``instruction``, optional ``input``, ``output``;
- conversations: ``messages`` (OpenAI) or ``conversations`` with ShareGPT's ``from``/``value`` (``human``/``gpt``);
- ``prompt`` with ``completion`` (or ``response``), as TRL's prompt-completion format.

Preference examples become ``prompt`` (messages), ``chosen`` and ``rejected`` (the two assistant replies, as
text), from ``prompt``/``chosen``/``rejected`` as strings or message lists, or ``chosen``/``rejected`` whole
conversations whose shared beginning is the prompt (TRL's ``maybe_extract_prompt`` finds it; its
``maybe_convert_to_chatml`` maps ShareGPT's keys). A row without a response or with an unknown role is a
one-line error naming the file and row.

The shipped corpora also give real instruction pairs once framed as such (derived, and said so in the
configs): AG News rows carry a title and a description, BBC News articles start with their headline, so
"write a headline for this story" has the real headline as its response and "which section does this story
belong to" the label's word. Preference pairs take the real headline as chosen and, as rejected, another
story's headline or a model's own greedy headline (``data.rejected_model``, generated once and cached, the
way DPO data is usually built from a model's own outputs). Each derived example keeps its topic as ``label``,
so parties can be split by topic (Dirichlet over topics, or one topic per party).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from ffm.data.config import SOURCES, DataConfig, SourceSpec
from ffm.data.sources import _ag_news, bbc_news_dir, data_dir, load_text_folder
from ffm.errors import DataError

__all__ = ["HEADLINE", "SECTION", "messages_of", "preference_of"]

ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
HEADLINE = "Write a headline for this news story.\n\n{story}"
SECTION = "Which section does this news story belong to? Answer with one of: {sections}.\n\n{story}"


def _message(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict) or "content" not in raw or "role" not in raw:
        raise DataError(f"{where}: a message must have 'role' and 'content' (or ShareGPT's 'from' and 'value'), got "
                        f"{str(raw)[:80]}")
    role = ROLES.get(str(raw["role"]).lower())
    if role is None:
        raise DataError(f"{where}: unknown role '{raw['role']}'; use system, user or assistant (ShareGPT: human, gpt)")
    return {"role": role, "content": str(raw["content"])}


def _messages(raw: Any, where: str) -> list[dict[str, str]]:
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise DataError(f"{where}: expected a list of messages or a string, got {type(raw).__name__}")
    return [_message(m, where) for m in raw]


def messages_of(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    """One supervised example as chat messages, from any supported format; its response is the last
    assistant message (a DataError names ``where`` when there is none)."""
    from trl.data_utils import maybe_convert_to_chatml

    row = maybe_convert_to_chatml({k: v for k, v in row.items() if v is not None})
    if "messages" in row:
        messages = _messages(row["messages"], where)
    elif "instruction" in row:
        prompt = str(row["instruction"]) + (f"\n\n{row['input']}" if str(row.get("input") or "").strip() else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(row.get("output", ""))}]
    elif "prompt" in row and ("completion" in row or "response" in row):
        reply = row.get("completion", row.get("response"))
        messages = _messages(row["prompt"], where) + [
            m if m["role"] == "assistant" else {**m, "role": "assistant"} for m in _messages(reply, where)]
    else:
        raise DataError(f"{where}: no instruction data: expected 'messages', 'conversations', 'instruction' + "
                        f"'output' or 'prompt' + 'completion'; the row has {sorted(row)}")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError(f"{where}: the example has no response (no non-empty assistant message); give it one or "
                        "delete the row")
    return messages


def _reply(raw: Any, where: str, which: str) -> str:
    if isinstance(raw, str):
        text = raw
    else:
        replies = [m["content"] for m in _messages(raw, where) if m["role"] == "assistant"]
        text = replies[-1] if replies else ""
    if not text.strip():
        raise DataError(f"{where}: '{which}' has no response; give both replies of the pair or delete the row")
    return text


def preference_of(row: dict[str, Any], where: str) -> tuple[list[dict[str, str]], str, str]:
    """One preference pair: (prompt messages, chosen reply, rejected reply)."""
    from trl.data_utils import maybe_convert_to_chatml, maybe_extract_prompt

    row = maybe_convert_to_chatml({k: v for k, v in row.items() if v is not None})
    if "chosen" not in row or "rejected" not in row:
        raise DataError(f"{where}: a preference row needs 'chosen' and 'rejected' (and 'prompt' unless both are "
                        f"whole conversations); the row has {sorted(row)}")
    row = maybe_extract_prompt(row)
    prompt = _messages(row.get("prompt", ""), where)
    if not prompt or not any(m["content"].strip() for m in prompt):
        raise DataError(f"{where}: the pair has no prompt")
    return prompt, _reply(row["chosen"], where, "chosen"), _reply(row["rejected"], where, "rejected")


def _rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL (or JSON list) file; CSV and Parquet through datasets."""
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist; set data.path to your JSONL of examples")
    if path.suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            return json.loads(text)
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        return rows
    kind = {".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
    if kind is None:
        raise DataError(f"data file '{path}': read .jsonl, .json, .csv or .parquet")
    return list(datasets.load_dataset(kind, data_files=str(path), split="train"))


def _with_label(columns: dict[str, list], labels: list[str] | None) -> datasets.Dataset:
    """A Dataset of ``columns``; with ``labels`` a ClassLabel ``label`` (what the topic partitioners split by)."""
    if labels is None:
        return datasets.Dataset.from_dict(columns)
    names = sorted(set(labels))
    ds = datasets.Dataset.from_dict({**columns, "label": [names.index(x) for x in labels]})
    return ds.cast_column("label", datasets.ClassLabel(names=names))


def _read_rows(cfg: DataConfig, what: str) -> tuple[Path, list[dict], list[str] | None]:
    """``data.path``'s rows (a one-line error when it holds none) and their ``data.label_column`` values, if
    every row has one."""
    path = Path(cfg.path)
    rows = _rows(path)
    if not rows:
        raise DataError(f"data file '{path}' holds no {what}")
    labels = [str(row[cfg.label_column]) for row in rows] if all(cfg.label_column in r for r in rows) else None
    return path, rows, labels


def load_instructions(cfg: DataConfig) -> datasets.Dataset:
    """``data.path``: supervised examples in any supported format, as ``messages`` (and ``label`` from
    ``data.label_column`` when the rows carry it: the partitioners can then split by it)."""
    path, rows, labels = _read_rows(cfg, "examples")
    messages = [messages_of(row, f"{path}, row {i + 1}") for i, row in enumerate(rows)]
    return _with_label({"messages": messages}, labels)


def load_preferences(cfg: DataConfig) -> datasets.Dataset:
    """``data.path``: preference pairs as ``prompt`` (messages), ``chosen`` and ``rejected`` (replies)."""
    path, rows, labels = _read_rows(cfg, "pairs")
    pairs = [preference_of(row, f"{path}, row {i + 1}") for i, row in enumerate(rows)]
    return _with_label({"prompt": [p for p, _, _ in pairs], "chosen": [c for _, c, _ in pairs],
                        "rejected": [r for _, _, r in pairs]}, labels)


# --- derived from the shipped corpora ---------------------------------------------------------------------


def _stories(source: str) -> list[tuple[str, str, str]]:
    """(headline, story, section) of every AG News row or BBC News article."""
    if source == "ag_news":
        import csv

        _ag_news()  # the clear error when the files are missing
        folder = data_dir() / "ag_news"
        names = [n.strip() for n in (folder / "classes.txt").read_text().splitlines() if n.strip()]
        with (folder / "test.csv").open(newline="", encoding="utf-8") as handle:
            return [(title.replace("\\", " ").strip(), body.replace("\\", " ").strip(), names[int(label) - 1])
                    for label, title, body in csv.reader(handle)]
    ds = load_text_folder(bbc_news_dir())
    names = ds.features["label"].names
    out = []
    for text, label in zip(ds["text"], ds["label"], strict=True):
        headline, _, body = text.strip().partition("\n")
        out.append((headline.strip(), " ".join(body.split()), names[label]))
    return out


def headline_task(source: str) -> Callable[[DataConfig], datasets.Dataset]:
    """"Write a headline for this story": the response is the story's real headline."""

    def load(cfg: DataConfig) -> datasets.Dataset:
        stories = [s for s in _stories(source) if s[0] and s[1]]
        return _with_label({"messages": [[{"role": "user", "content": HEADLINE.format(story=story)},
                                          {"role": "assistant", "content": headline}]
                                         for headline, story, _ in stories]}, [s[2] for s in stories])

    return load


def section_task(source: str) -> Callable[[DataConfig], datasets.Dataset]:
    """"Which section does this story belong to": the response is the label's word."""

    def load(cfg: DataConfig) -> datasets.Dataset:
        stories = [s for s in _stories(source) if s[1]]
        sections = ", ".join(sorted({s[2] for s in stories}))
        return _with_label({"messages": [[
            {"role": "user", "content": SECTION.format(sections=sections, story=f"{headline}. {story}")},
            {"role": "assistant", "content": section}] for headline, story, section in stories]},
            [s[2] for s in stories])

    return load


def headline_pairs(source: str) -> Callable[[DataConfig], datasets.Dataset]:
    """Preference pairs on "write a headline": chosen = the real headline; rejected = another story's headline
    (the default), or ``data.rejected_model``'s own greedy headline (generated once, cached)."""

    def load(cfg: DataConfig) -> datasets.Dataset:
        stories = [s for s in _stories(source) if s[0] and s[1]]
        if cfg.max_examples and cfg.max_examples < len(stories):  # generate for the examples the job can use
            stories = random.Random(0).sample(stories, cfg.max_examples)
        prompts = [HEADLINE.format(story=story) for _, story, _ in stories]
        if cfg.rejected_model:
            rejected = model_replies(cfg.rejected_model, prompts)
        else:
            shuffled = list(range(len(stories)))
            random.Random(0).shuffle(shuffled)
            rejected = [stories[shuffled[i] if shuffled[i] != i else (i + 1) % len(stories)][0]
                        for i in range(len(stories))]
        keep = [i for i in range(len(stories)) if rejected[i].strip() and rejected[i].strip() != stories[i][0]]
        return _with_label({"prompt": [[{"role": "user", "content": prompts[i]}] for i in keep],
                            "chosen": [stories[i][0] for i in keep], "rejected": [rejected[i] for i in keep]},
                           [stories[i][2] for i in keep])

    return load


def model_replies(model_name: str, prompts: list[str], max_new_tokens: int = 24, batch_size: int = 16) -> list[str]:
    """``model_name``'s greedy reply to each prompt (one user turn, its chat template), cached on disk by model
    and prompts: generated once, read back on every later run."""
    from ffm.models.gguf import cache_dir

    digest = hashlib.sha256(json.dumps([model_name, max_new_tokens, prompts]).encode()).hexdigest()[:16]
    path = cache_dir() / "replies" / f"{Path(model_name).name}-{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ffm.models import resolve_model_path
    from ffm.tasks.chat import prompt_ids
    from ffm.tasks.generation import generate

    where = resolve_model_path(model_name)
    tokenizer = AutoTokenizer.from_pretrained(where)
    model = AutoModelForCausalLM.from_pretrained(where, torch_dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ids = [prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    replies = generate(model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(replies))
    tmp.replace(path)
    return replies


SOURCES.register("instructions", SourceSpec(load_instructions, reads_path=True))
SOURCES.register("preferences", SourceSpec(load_preferences, reads_path=True))
SOURCES.register("ag_news_headlines", SourceSpec(headline_task("ag_news")))
SOURCES.register("ag_news_sections", SourceSpec(section_task("ag_news")))
SOURCES.register("ag_news_headline_pairs", SourceSpec(headline_pairs("ag_news")))
SOURCES.register("bbc_headlines", SourceSpec(headline_task("bbc_news")))
