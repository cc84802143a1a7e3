"""The README's config reference stays complete as keys are added."""

from pathlib import Path

from ffm.config import describe_keys


def test_readme_config_reference_names_every_key():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()

    missing = [key for key, *_ in describe_keys() if f"`{key}`" not in readme]

    assert missing == []
