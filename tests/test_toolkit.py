"""The toolkit for plugin authors: what `airo.core` exports, that importing it stays cheap,
and that the built-in plugins use it as a third party would (never each other)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

import airo.core
from airo.core import api

REPO = Path(__file__).resolve().parent.parent
PLUGINS_DIR = REPO / "plugins"


def plugin_entry_modules() -> set[str]:
    """The modules of airo's own plugins (entry points in the `airo` group of pyproject.toml)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return set(project["entry-points"]["airo"].values())


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (function-level imports included),
    written as absolute ``airo.plugins.*`` names; ``from package import name`` yields both
    the package and ``package.name`` (the name may be a module)."""
    package = "airo.plugins"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_plugin_entry_points_are_found():
    modules = plugin_entry_modules()
    assert {"airo.plugins.formats", "airo.plugins.templates", "airo.plugins.airoboros"} <= modules


@pytest.mark.parametrize("path", sorted(PLUGINS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_builtin_plugins_import_no_other_plugin(path):
    """A built-in plugin gets shared code from airo.core (or a helper module that is no
    plugin), like a third-party one: disabling one plugin must never break another."""
    own = f"airo.plugins.{path.stem}"
    others = plugin_entry_modules() - {own}
    imported = imported_modules(path)
    assert not imported & others, f"plugins/{path.name} imports the plugin(s) {sorted(imported & others)}"


def test_the_import_check_sees_every_import_form(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import airo.plugins.a\nfrom airo.plugins import b\nfrom .c import x\n"
                      "def f():\n    from . import d\n    from airo.plugins.e import y\n")
    assert {f"airo.plugins.{m}" for m in "abcde"} <= imported_modules(source)


TOOLKIT = {
    "TrainConfig": "airo.core.config",
    "TrainContext": "airo.core.training.context",
    "TrainResult": "airo.core.training.context",
    "LoadedModel": "airo.core.types",
    "load_tokenizer": "airo.core.tokenizer",
    "save_tokenizer": "airo.core.tokenizer",
    "Conversation": "airo.core.types",
    "Message": "airo.core.types",
    "Segment": "airo.core.types",
    "PromptTemplate": "airo.core.types",
    "BaseTemplate": "airo.core.templating",
    "MarkerTemplate": "airo.core.templating",
    "ReferenceTemplate": "airo.core.templating",
    "SegmentBuilder": "airo.core.templating",
    "hookimpl": "airo.core.hookspecs",
    "PluginError": "airo.core.errors",
}


@pytest.mark.parametrize("name, module", sorted(TOOLKIT.items()))
def test_airo_core_exports_the_toolkit(name, module):
    import importlib

    assert name in airo.core.__all__ and name in dir(airo.core)
    assert getattr(airo.core, name) is getattr(importlib.import_module(module), name)


def test_airo_core_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'TrainConfg'"):
        airo.core.TrainConfg  # noqa: B018


def test_importing_airo_core_imports_nothing_heavy():
    """`import airo.core` (what every plugin does) loads neither torch nor the training run;
    the run's names, once asked for, still bring no torch or transformers."""
    code = ("import sys\n"
            "def loaded(*names): return sorted(m for m in names if m in sys.modules)\n"
            "import airo.core\n"
            "print(loaded('torch', 'transformers', 'datasets', 'airo.core.training', 'airo.core.config'))\n"
            "from airo.core import TrainConfig, TrainContext, TrainResult, load_tokenizer, save_tokenizer\n"
            "import airo.core.records, airo.core.templating\n"
            "print(loaded('torch', 'transformers', 'datasets'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "[]"]


API_RETURNS = {
    "load_config": "TrainConfig",
    "registry": "Registry",
    "plugins": "list[PluginInfo]",
    "preprocess": "PreprocessResult",
    "preview": "list[dict[str, Any]]",
    "train": "TrainResult",
}


def _type_checking_namespace() -> dict:
    """airo.core.api's globals plus what it imports only for type checkers."""
    tree = ast.parse(Path(api.__file__).read_text(encoding="utf-8"))
    namespace = dict(vars(api))
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            exec(compile(ast.Module(node.body, []), api.__file__, "exec"), namespace)
    return namespace


def test_api_is_fully_typed():
    public = {name for name, fn in vars(api).items()
              if callable(fn) and getattr(fn, "__module__", "") == api.__name__ and not name.startswith("_")}
    assert public == set(API_RETURNS)
    namespace = _type_checking_namespace()
    for name, returns in API_RETURNS.items():
        fn = getattr(api, name)
        assert fn.__annotations__.get("return") == returns, name
        hints = typing.get_type_hints(fn, globalns=namespace)  # every annotation resolves
        assert set(hints) == set(fn.__annotations__), name
