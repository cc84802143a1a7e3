"""Public docstring coverage of ffm: modules, classes, functions and methods, read from the source (``ast``).

Public: a name without a leading underscore, at module level or in a public class (dunders excluded). A module,
class or function counts as documented when it has a docstring of its own. A method counts when it has its own,
or when it overrides a method that a base class documents, in ffm or in a library (Flower's ``Strategy``,
``Grid``): what ``help()`` and ``inspect.getdoc`` show for it. Dataclass fields are documented by their ``help``
text (``ffm config``) and are not counted here.

Launch:  .venv/bin/python scripts/docstring_coverage.py [--list] [PATH ...]
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ffm"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _public(name: str) -> bool:
    return not name.startswith("_")


def _inherits_doc(module: str, cls: str, method: str) -> bool:
    """Whether a base class of ``module.cls`` (anywhere in its MRO) documents ``method``."""
    try:
        owner = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return False
    return any(method in base.__dict__ and inspect.getdoc(base.__dict__[method]) for base in owner.__mro__[1:])


def definitions(root: Path = ROOT) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """(modules with whether each has a docstring, public definitions with whether each is documented)."""
    modules, defs = [], []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        where = str(path.relative_to(root.parent))
        dotted = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        modules.append((where, bool(ast.get_docstring(tree))))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _public(node.name):
                defs.append((f"{where}:{node.name}", bool(ast.get_docstring(node))))
            elif isinstance(node, ast.ClassDef) and _public(node.name):
                defs.append((f"{where}:{node.name}", bool(ast.get_docstring(node))))
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _public(item.name):
                        own = bool(ast.get_docstring(item))
                        defs.append((f"{where}:{node.name}.{item.name}",
                                     own or _inherits_doc(dotted, node.name, item.name)))
    return modules, defs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the undocumented ones")
    args = parser.parse_args()
    modules, defs = definitions()
    documented = sum(ok for _, ok in defs)
    print(f"modules with a docstring: {sum(ok for _, ok in modules)} of {len(modules)}")
    print(f"public definitions documented: {documented} of {len(defs)} ({100 * documented / len(defs):.1f}%)")
    if args.list:
        for name, ok in modules + defs:
            if not ok:
                print("  missing:", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
