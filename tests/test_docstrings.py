"""Every module says what it is for, and at least 90% of ffm's public definitions have a docstring (measured by
scripts/docstring_coverage.py: own docstrings, or a documented method a base class defines)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "docstring_coverage.py"


def _coverage():
    spec = importlib.util.spec_from_file_location("docstring_coverage", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.definitions()


def test_every_module_has_a_docstring_and_nine_in_ten_public_definitions_do():
    modules, defs = _coverage()

    assert [name for name, ok in modules if not ok] == []
    undocumented = [name for name, ok in defs if not ok]
    assert len(undocumented) <= 0.1 * len(defs), undocumented
