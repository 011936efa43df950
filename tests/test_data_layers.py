"""The data layer's shape (issue 18): small modules, imports one way, nothing above imported.

Static: every import in a module's source, at the top or inside a function, is an edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "core"
DATA = CORE / "data"
# the config side of the old config <-> data cache circle
CONFIG = ("config", "flags", "options", "yaml_config")
OTHERS = {"decontaminate.py"}  # written alongside, by its own issue


def _module(path: Path) -> str:
    rel = path.relative_to(CORE).with_suffix("")
    return ".".join(rel.parts)


def _imports(path: Path) -> set[str]:
    """The core modules ``path`` imports (``data.io``, ``config``...), relative or absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module(path).split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("airo.core."):
                target = node.module[len("airo.core."):]
            else:
                continue
            names = [f"{target}.{a.name}" if target else a.name for a in node.names]
            for name in [target, *names]:
                if name and ((CORE / name.replace(".", "/")).with_suffix(".py").is_file()):
                    out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    files = [p for p in DATA.glob("*.py")] + [CORE / f"{name}.py" for name in CONFIG]
    return {_module(p): _imports(p) for p in files}


def test_data_modules_are_small():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in DATA.glob("*.py")
             if p.name not in OTHERS}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_no_import_circle_in_the_data_layer_or_with_the_config():
    graph = _graph()
    seen: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if seen.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(nxt):] + [node, nxt]))
            if nxt not in seen:
                visit(nxt, stack + [node])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [])


def test_the_data_layer_imports_nothing_above_it():
    """Not the training run, the CLI or the API (the rows meet the model and the Trainer in
    ``training.batches``), not even lazily."""
    above = ("training", "cli", "api")
    found = {name: sorted(m for m in deps if m.split(".")[0] in above) for name, deps in _graph().items()
             if name.startswith("data.")}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_bottom_modules_import_nothing_of_airo():
    for name in ("paths", "raw"):
        deps = _imports(DATA / f"{name}.py")
        assert deps <= {"errors"}, (name, deps)
