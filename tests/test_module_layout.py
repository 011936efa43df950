"""The shape of the code (issue 22): no module of core/ or plugins/ over 400 lines, and no
circle in the import graph of core/ (a module imported while it is still being imported).

The graph holds the imports that run when a module is imported: module-level ``import``
and ``from ... import`` statements (inside ``if``/``try`` blocks too), but not those under
``if TYPE_CHECKING:`` nor those inside functions, which run when called, after every
module has loaded (the core defers the training run and the data pipeline that way, so
``import airo.core`` stays cheap).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "core"
MAX_LINES = 400


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _modules(CORE) + _modules(REPO / "plugins"), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_over_400_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, (f"{path.relative_to(REPO)} has {lines} lines (at most {MAX_LINES}): split it by "
                                "concept, keeping the old import path working where the tests use it")


def module_name(path: Path, root: Path = CORE, package: str = "airo.core") -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _import_time_nodes(body: list[ast.stmt]):
    """The import statements that run at import time (TYPE_CHECKING blocks and function
    bodies left out; if/try/with blocks followed)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" in ast.unparse(node.test):
                yield from _import_time_nodes(node.orelse)
            else:
                yield from _import_time_nodes(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _import_time_nodes(node.body + node.orelse + node.finalbody
                                          + [s for h in node.handlers for s in h.body])
        elif isinstance(node, ast.With):
            yield from _import_time_nodes(node.body)


def _all_imports(body: list[ast.stmt]):
    """Every import statement, deferred ones (inside functions, TYPE_CHECKING) included."""
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def import_graph(root: Path = CORE, package: str = "airo.core", *, deferred: bool = False) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports at import time (``deferred``: anywhere)."""
    collect = _all_imports if deferred else _import_time_nodes
    paths = {module_name(p, root, package): p for p in _modules(root)}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in collect(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in paths}
                continue
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in paths:
                    edges.add(full)
                elif target in paths:
                    edges.add(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_core_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 40 and "airo.core.atomic" in graph["airo.core.training.folders"]
    assert cycles(graph) == [], "modules of core/ that import each other at import time: " + "; ".join(
        " <-> ".join(c) for c in cycles(graph))


def test_no_circle_even_through_deferred_imports():
    """Counting the imports inside functions too, no module of core is in a circle: the option
    table, the plugin manager, the folder writers, the data layers and the training run each
    import only below themselves (the package's ``__version__`` lives in ``version.py`` for
    that; the preference batches have a module of their own so the packing and the Trainer
    both import it)."""
    found = cycles(import_graph(deferred=True))
    assert found == [], "modules that import each other, through deferred imports: " + "; ".join(
        " <-> ".join(c) for c in found)


def test_the_circle_check_finds_circles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from .sub.c import x\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n"
                                      "def f():\n    from ..a import y\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == set()
    assert cycles(graph) == []
    (pkg / "sub" / "c.py").write_text("try:\n    from ..a import y\nexcept ImportError:\n    pass\n")
    assert cycles(import_graph(pkg, "pkg")) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    (pkg / "sub" / "c.py").write_text("def f():\n    from ..a import y\n")
    assert cycles(import_graph(pkg, "pkg")) == []
    assert cycles(import_graph(pkg, "pkg", deferred=True)) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
