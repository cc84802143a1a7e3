"""The layers hold: no import circle among ffm's modules or its packages, and the job config names no plug-in.

The graph is read from the source (the ``ast`` of every module): every import counts, also one inside a
function (a lazy import that only dodges a circle is still a circle), except under ``if TYPE_CHECKING:``,
which never runs. Importing ``ffm.a.b`` runs ``ffm/a/__init__.py`` first, so it is an edge to ``ffm.a`` too
(unless the importer lives inside ``ffm.a``, which is then already being imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FFM = Path(__file__).resolve().parents[1] / "ffm"


def _modules() -> dict[str, Path]:
    out = {}
    for path in FFM.rglob("*.py"):
        parts = list(path.relative_to(FFM.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (those under ``if TYPE_CHECKING:`` cannot)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    """Module -> the ffm modules importing it runs (see the module docstring)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [resolve(alias.name) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [resolve(f"{base}.{alias.name}") if f"{base}.{alias.name}" in modules else resolve(base)
                           for alias in node.names]
            for target in filter(None, targets):
                mine = {name, *_ancestors(name)}
                for runs in [target, *_ancestors(target)]:
                    if runs not in mine and runs in modules:
                        graph[name].add(runs)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_module_imports_itself_back_through_others():
    assert _cycles(import_graph()) == []


def test_no_package_of_ffm_imports_itself_back_through_others():
    packages: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        packages.setdefault(_package(module), set()).update(
            _package(t) for t in targets if _package(t) != _package(module) and _package(t) != "ffm")

    assert _cycles(packages) == []


def test_the_cycle_finder_finds_a_circle_of_three():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_graph_sees_imports_inside_functions_but_not_type_checking_blocks():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n"
                     "def f():\n    import y\n")

    assert [ast.unparse(node) for node in _runtime_imports(tree)] == ["from typing import TYPE_CHECKING",
                                                                      "import y"]


def _registered_names() -> set[str]:
    import ffm.config  # noqa: F401 - the catalogue registers every built-in plug-in
    from ffm.compression import CODECS
    from ffm.data import PARTITIONERS, SOURCES, STREAMS
    from ffm.methods import METHODS
    from ffm.mods import MODS
    from ffm.observers import OBSERVERS
    from ffm.privacy import PRIVACY
    from ffm.strategies import STRATEGIES
    from ffm.tasks import TASKS

    registries = (CODECS, PARTITIONERS, SOURCES, STREAMS, METHODS, MODS, OBSERVERS, PRIVACY, STRATEGIES, TASKS)
    return {name for registry in registries for name in registry.names()}


@pytest.mark.parametrize("module", ["config.py", "settings.py"])
def test_the_job_config_and_the_settings_machinery_name_no_plug_in(module):
    tree = ast.parse((FFM / module).read_text())
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}

    assert literals & _registered_names() == set()
