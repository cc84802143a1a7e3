"""Chat examples as token ids: rendered with the model's own chat template, the loss on the assistant's tokens.

:func:`render` turns messages into token ids and a mask of which ids the assistant wrote: with the tokenizer's
chat template (``tokenizer.apply_chat_template``), each assistant turn is the text that rendering
``messages[:i + 1]`` adds to rendering ``messages[:i]`` with the generation prompt; the tokens whose characters
fall in those spans are the assistant's (character offsets of a fast tokenizer). A tokenizer without a chat
template needs ``task.template``, a plain format with ``{prompt}`` (``### Instruction:\\n{prompt}\\n\\n###
Response:\\n``): each user turn is rendered through it, each assistant turn follows with the end-of-text token.

:func:`fit` truncates an example so that its response survives: the last user turn is shortened from its end
(the instruction at its start stays), and only a response longer than the context itself is cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ffm.errors import DataError

__all__ = ["Rendered", "fit", "prompt_ids", "render"]


@dataclass(frozen=True)
class Rendered:
    """One example's token ids and, per id, whether the assistant wrote it (the tokens the loss is on)."""

    ids: list[int]
    assistant: list[bool]


def _text(tokenizer: PreTrainedTokenizerBase, messages: list[dict], template: str, generation: bool) -> str:
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    if not template:
        raise DataError("the tokenizer has no chat template: set task.template, e.g. '### Instruction:\\n{prompt}"
                        "\\n\\n### Response:\\n' (a plain format with {prompt})")
    parts, system = [], ""
    for message in messages:
        if message["role"] == "system":
            system = message["content"] + "\n\n"
        elif message["role"] == "user":
            parts.append(template.format(prompt=system + message["content"]))
            system = ""
        else:
            parts.append(message["content"] + (tokenizer.eos_token or ""))
    return "".join(parts)


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], template: str = "") -> Rendered:
    """``messages`` as token ids with the assistant's tokens marked."""
    full = _text(tokenizer, messages, template, generation=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _text(tokenizer, messages[:i], template, generation=True) if i else ""
        upto = _text(tokenizer, messages[: i + 1], template, generation=False)
        if not full.startswith(upto) or not upto.startswith(before):
            raise DataError("the chat template renders a conversation's beginning differently from the whole; set "
                            "task.template to render turns one after another")
        spans.append((len(before), len(upto)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    assistant = [any(lo <= start < hi for lo, hi in spans) for start, _ in encoded["offset_mapping"]]
    return Rendered(list(encoded["input_ids"]), assistant)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], template: str = "") -> list[int]:
    """The ids a model continues to write the reply to ``messages`` (the generation prompt included)."""
    text = _text(tokenizer, messages, template, generation=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _shortened(messages: list[dict], by: int) -> list[dict]:
    """``messages`` with the last user turn ``by`` characters shorter (from its end)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    content = messages[last]["content"]
    return [*messages[:last], {**messages[last], "content": content[: max(0, len(content) - by)]},
            *messages[last + 1 :]]


def fit(tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int, template: str = "",
        reply: str | None = None) -> tuple[list[dict], Rendered]:
    """(messages, rendering) within ``max_length`` tokens, the response kept: the last user turn shortened,
    else the end of the rendering cut. ``reply``: an assistant reply appended to ``messages`` for the budget
    (a preference pair's longer reply), not rendered."""
    probe = messages if reply is None else [*messages, {"role": "assistant", "content": reply}]
    rendered = render(tokenizer, probe, template)
    for _ in range(12):
        over = len(rendered.ids) - max_length
        if over <= 0 or not any(m["role"] == "user" and m["content"] for m in probe):
            break
        probe = _shortened(probe, over * 3 + 8)  # about 3-4 characters per token
        rendered = render(tokenizer, probe, template)
    kept = probe if reply is None else probe[:-1]
    return kept, Rendered(rendered.ids[:max_length], rendered.assistant[:max_length])
