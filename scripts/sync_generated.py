"""Rewrite the two generated parts of the repository from the code: run after adding a config key.

- ``pyproject.toml``'s ``[tool.flwr.app.config]``: every key of every task, method and strategy, which a
  SuperLink needs declared (tests/test_deploy.py checks it);
- ``README.md``'s config reference table (tests/test_docs.py checks it names every key).

Launch:  .venv/bin/python scripts/sync_generated.py
"""

from __future__ import annotations

import os
from pathlib import Path

import tomli_w

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ffm.config import describe_keys
from ffm.runtime.deploy import app_pyproject

REPO = Path(__file__).resolve().parents[1]


def sync_pyproject() -> None:
    path = REPO / "pyproject.toml"
    text = path.read_text()
    head = text[: text.index("[tool.flwr.app.config]")]
    config = app_pyproject()["tool"]["flwr"]["app"]["config"]
    path.write_text(head + tomli_w.dumps({"tool": {"flwr": {"app": {"config": config}}}}))


def sync_readme() -> None:
    path = REPO / "README.md"
    text = path.read_text()
    start = text.index("| key | type | default | meaning |")
    end = text.index("\n\n", start)
    rows = [f"| `{k}` | {t} | `{d}` | {h.replace('|', chr(92) + '|')} |" for k, t, d, h in describe_keys()]
    table = "| key | type | default | meaning |\n| --- | --- | --- | --- |\n" + "\n".join(rows)
    path.write_text(text[:start] + table + text[end:])


if __name__ == "__main__":
    sync_pyproject()
    sync_readme()
    print("synced pyproject.toml [tool.flwr.app.config] and the README's config reference")
