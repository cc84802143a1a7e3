"""The documentation stays true as the code changes: the generated config reference is current, every registered
plug-in is documented, no relative link is broken, the README stays a front page, and the shipped configs run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import ffm.config  # noqa: F401 - registers the built-in plug-ins before the registries are read

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](path) or [text](path "title")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _sync_generated():
    spec = importlib.util.spec_from_file_location("sync_generated", REPO / "scripts" / "sync_generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _registered_plugins() -> dict[str, list[str]]:
    from ffm.compression import CODECS
    from ffm.methods import METHODS
    from ffm.mods import MODS
    from ffm.observers import OBSERVERS
    from ffm.privacy import PRIVACY
    from ffm.strategies import STRATEGIES
    from ffm.tasks import TASKS

    return {
        "task": TASKS.names(),
        "method": METHODS.names(),
        "strategy": STRATEGIES.names(),
        "client mod": [name for name, spec in MODS.items() if not spec.switched_on_by],
        "codec": CODECS.names(),
        "observer": OBSERVERS.names(),
        "privacy mechanism": PRIVACY.names(),
    }


def test_the_config_reference_is_what_sync_generated_writes_now():
    sync = _sync_generated()

    expected = sync.render_config_reference()

    assert sync.CONFIG_REFERENCE == DOCS / "config.md"
    assert (DOCS / "config.md").read_text() == expected, (
        "docs/config.md is out of date: run `.venv/bin/python scripts/sync_generated.py`")


def test_every_registered_plugin_is_named_in_the_readme_or_a_guide():
    text = "\n".join(page.read_text() for page in _pages())

    missing = [f"{kind} '{name}'" for kind, names in _registered_plugins().items() for name in names
               if f"`{name}`" not in text]

    assert missing == [], f"not named in backticks in README.md or docs/*.md: {', '.join(missing)}"


def test_every_relative_link_points_to_a_file_that_exists():
    broken = []
    for page in _pages():
        text = FENCE.sub("", page.read_text())  # a link-like text inside a code block is not a link
        for target in LINK.findall(text):
            if re.match(r"^(https?:|mailto:)", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")

    assert broken == []


def test_the_readme_is_a_front_page_of_at_most_260_lines():
    lines = README.read_text().splitlines()

    assert len(lines) <= 260, f"README.md has {len(lines)} lines; move detail into a guide under docs/"


def test_no_page_points_users_to_the_shared_folder_they_do_not_have():
    mentions = [str(page.relative_to(REPO)) for page in [README, *sorted(DOCS.rglob("*"))]
                if page.is_file() and "../shared" in page.read_text(errors="ignore")]

    assert mentions == []


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_a_valid_job_that_says_how_to_launch_it(path):
    from ffm.config import load_job

    job = load_job(path)

    assert job.federation.rounds >= 1
    assert "Launch:" in path.read_text().split("\nmode:")[0]  # the header comment says how to run it
