"""The README's config reference stays complete as keys are added."""

from pathlib import Path

import pytest

from ffm.config import describe_keys


def test_readme_config_reference_names_every_key():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()

    missing = [key for key, *_ in describe_keys() if f"`{key}`" not in readme]

    assert missing == []


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_is_a_valid_job_that_says_how_to_launch_it(path):
    from ffm.config import load_job

    job = load_job(path)

    assert job.federation.rounds >= 1
    assert "Launch:" in path.read_text().split("\nmode:")[0]  # the header comment says how to run it
