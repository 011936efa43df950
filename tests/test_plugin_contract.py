"""The typed plugin contract (airo.core.contract) against the code that uses it.

- each ``register(...)`` protocol has the exact signature of the registry's entry factory;
- every built-in registration hands over callables the way airo calls them (a positional
  call with the protocol's arguments binds to each), templates and option sections of the
  protocol's shape, and commands through the methods ``CommandGroup`` names;
- the contexts airo passes (TrainContext, CallbackContext, EvaluationContext) have every
  attribute their protocol promises;
- no plugin, built-in or example, imports a core internal: only names ``airo.core`` exports.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import tomllib
import typing
from pathlib import Path

import pytest

import airo.core
from airo.core import contract, hookspecs
from airo.core.registry import KIND_TABLE

REPO = Path(__file__).resolve().parent.parent
PLUGIN_SOURCES = sorted((REPO / "plugins").glob("*.py")) + sorted(
    (REPO / "examples" / "airo-plugin-example" / "airo_plugin_example").glob("*.py"))
SCAFFOLD = REPO / "plugins" / "scaffold_template" / "__init__.py.tmpl"


def _hooks() -> set[str]:
    return {name for name in dir(hookspecs) if name.startswith("register_")}


def _parameters(fn, *, drop_self: bool) -> list[tuple[str, inspect._ParameterKind, object]]:
    params = list(inspect.signature(fn).parameters.values())
    if drop_self:
        params = params[1:]
    return [(p.name, p.kind, p.default) for p in params]


# -- register(...) -------------------------------------------------------------------------------

def test_every_registering_hook_has_a_register_protocol():
    assert set(contract.REGISTER_PROTOCOLS) == _hooks() - {"register_commands"}
    assert set(contract.CALLABLE_PROTOCOLS) <= set(contract.REGISTER_PROTOCOLS)


@pytest.mark.parametrize("kind", KIND_TABLE, ids=lambda k: k.hook)
def test_register_protocol_is_the_entry_factory(kind):
    """``register`` is the factory (the plugin manager passes the plugin's arguments through)."""
    protocol = contract.REGISTER_PROTOCOLS[kind.hook]
    assert _parameters(protocol.__call__, drop_self=True) == _parameters(kind.make, drop_self=False)


@pytest.mark.parametrize("kind", KIND_TABLE, ids=lambda k: k.hook)
def test_register_protocol_is_the_documented_one(kind):
    """The hook's docstring shows the same ``register(...)`` (CONTRIBUTING shows the docstring's)."""
    doc = " ".join((getattr(hookspecs, kind.hook).__doc__ or "").split())
    start = doc.index("``register(") + 2
    shown = doc[start:doc.index("``", start)]
    params = inspect.signature(contract.REGISTER_PROTOCOLS[kind.hook].__call__).parameters
    parts, star = [], False
    for p in list(params.values())[1:]:
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}".replace("'", '"'))
    assert shown == f"register({', '.join(parts)})"


@pytest.mark.parametrize("kind", KIND_TABLE, ids=lambda k: k.hook)
def test_guarded_callables_have_protocols(kind):
    """Every callable the registry guards (calls on the plugin's behalf) is typed."""
    assert set(kind.guarded) <= set(contract.CALLABLE_PROTOCOLS.get(kind.hook, {}))


# -- what the built-ins register ---------------------------------------------------------------------

EXAMPLE = REPO / "examples" / "airo-plugin-example" / "airo_plugin_example" / "__init__.py"


def _builtin_modules() -> list:
    """airo's own plugin modules, and the example plugin (loaded from its source)."""
    import importlib.util

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    modules = [importlib.import_module(name) for name in sorted(set(project["entry-points"]["airo"].values()))]
    spec = importlib.util.spec_from_file_location("airo_plugin_example_source", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return modules + [example]


def _positional_count(protocol: type) -> int:
    return sum(1 for p in list(inspect.signature(protocol.__call__).parameters.values())[1:]
               if p.kind is p.POSITIONAL_ONLY)


def _registrations():
    """(module, hook, name, {argument: value}) for every built-in registration."""
    found = []
    for module in _builtin_modules():
        module_name = module.__name__
        for hook in sorted(_hooks() - {"register_commands"}):
            impl = getattr(module, hook, None)
            if impl is None:
                continue
            protocol = contract.REGISTER_PROTOCOLS[hook]
            signature = inspect.signature(protocol.__call__)

            def register(*args, _hook=hook, _signature=signature, _module=module_name, **kwargs):
                bound = _signature.bind(None, *args, **kwargs)  # a TypeError: not the protocol's call
                arguments = dict(bound.arguments)
                arguments.pop("self")
                found.append((_module, _hook, arguments["name"], arguments))

            impl(register)
    return found


REGISTRATIONS = _registrations()


def test_the_builtins_register_something_of_every_kind():
    hooks = {hook for _, hook, _, _ in REGISTRATIONS}
    assert hooks >= {"register_dataset_formats", "register_prompt_templates", "register_options",
                     "register_model_loaders", "register_tokenizer_patches", "register_post_train_actions",
                     "register_evaluations", "register_next_steps"}


@pytest.mark.parametrize("module, hook, name, arguments", REGISTRATIONS, ids=lambda v: v if isinstance(v, str) else "")
def test_builtin_registration_satisfies_its_protocols(module, hook, name, arguments):
    for argument, protocol in contract.CALLABLE_PROTOCOLS.get(hook, {}).items():
        value = arguments.get(argument)
        if value is None:
            continue
        assert callable(value), f"{module}: {hook} {name!r}: {argument} is not callable"
        try:  # airo calls it positionally, with the protocol's arguments
            inspect.signature(value).bind(*([None] * _positional_count(protocol)))
        except TypeError as exc:
            pytest.fail(f"{module}: {hook} {name!r}: {argument}{inspect.signature(value)} cannot be called as "
                        f"{protocol.__name__}{inspect.signature(protocol.__call__)}: {exc}")
    if hook == "register_prompt_templates":
        assert isinstance(arguments["template"], airo.core.PromptTemplate)
    if hook == "register_options":
        args = arguments["args"]
        assert isinstance(args, type) and isinstance(args, contract.OptionsArgs) and dataclasses.is_dataclass(args)
        validate = getattr(args, "validate", None)
        if validate is not None:
            inspect.signature(validate).bind(None, None)  # validate(self, config)


def test_builtin_commands_use_only_the_command_group_protocol():
    """``register_commands(cli)`` gets a click.Group; the built-ins use what CommandGroup names."""
    import click

    allowed = {name for name in dir(contract.CommandGroup) if not name.startswith("_")}
    used: set[str] = set()

    class Recording:
        def __init__(self, group):
            self._group = group

        def __getattr__(self, name):
            used.add(name)
            return getattr(self._group, name)

    for module in _builtin_modules():
        impl = getattr(module, "register_commands", None)
        if impl is not None:
            impl(Recording(click.Group("airo")))
    assert used and used <= allowed, f"commands use {sorted(used - allowed)}, which CommandGroup does not name"


# -- the contexts ------------------------------------------------------------------------------------

def _promised(protocol: type) -> set[str]:
    names = set()
    for klass in protocol.__mro__:
        if klass in (typing.Protocol, typing.Generic, object):
            continue
        names |= set(getattr(klass, "__annotations__", {}))
        names |= {n for n in vars(klass) if not n.startswith("_")}
    return names


@pytest.mark.parametrize("protocol, concrete", [
    ("ActionContext", "TrainContext"),
    ("CallbackContextLike", "CallbackContext"),
    ("EvaluationContextLike", "EvaluationContext"),
])
def test_the_contexts_keep_their_protocol(protocol, concrete):
    klass = getattr(airo.core, concrete)
    fields = {f.name for f in dataclasses.fields(klass)}
    missing = {name for name in _promised(getattr(contract, protocol)) if name not in fields and not hasattr(klass, name)}
    assert not missing, f"{concrete} lacks what {protocol} promises: {sorted(missing)}"


def test_planned_output_is_what_the_loader_declares(airo_env):
    from airo.core import ModelOutput, api, planned_output

    adapter = api.load_config(argv=["--model_name_or_path", "m", "--output_dir", "o", "--dataset", "d.jsonl"],
                              include_training=False)
    assert planned_output(adapter) == ModelOutput("adapter", 0, "float32")
    full = api.load_config(argv=["--model_name_or_path", "m", "--output_dir", "o", "--dataset", "d.jsonl",
                                 "--full_finetune", "--bits", "16"], include_training=False)
    assert planned_output(full).kind == "model" and not planned_output(full).is_adapter
    with pytest.raises(ValueError, match="kind must be"):
        ModelOutput("weights")


def test_loaded_model_says_what_it_produces():
    from airo.core import LoadedModel, ModelOutput

    assert LoadedModel(model=None, tokenizer=None, is_peft=True).output == ModelOutput("adapter")
    assert LoadedModel(model=None, tokenizer=None).output.kind == "model"


# -- no plugin imports a core internal -------------------------------------------------------------

def core_imports(source: str, *, package: str = "airo.plugins") -> list[tuple[int, str]]:
    """``(line, what)`` for every import in ``source`` (function-level ones too) of a core
    internal: a submodule of ``airo.core`` (absolute or relative), or a name that
    ``airo.core`` does not export (``from airo.core import records`` imports a submodule)."""
    public = set(airo.core.__all__)
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            problems += [(node.lineno, a.name) for a in node.names if a.name.startswith("airo.core.")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            if module.startswith("airo.core."):
                problems.append((node.lineno, f"from {module} import ..."))
            elif module == "airo.core":
                problems += [(node.lineno, f"airo.core.{a.name}") for a in node.names if a.name not in public]
    return problems


def test_the_import_check_sees_every_form():
    sample = ("import airo.core.atomic\nfrom airo.core.training import dist\nfrom airo.core import records\n"
              "from ..core.flags import all_flags\nfrom airo.core import hookimpl, ConfigError\n"
              "def f():\n    from airo.core.data.cache import cache_home\n    import airo.core\n")
    assert [line for line, _ in core_imports(sample)] == [1, 2, 3, 4, 7]


@pytest.mark.parametrize("path", PLUGIN_SOURCES + [SCAFFOLD], ids=lambda p: p.name)
def test_plugins_import_only_the_public_core(path):
    """A plugin (built-in or not) uses what ``airo.core`` exports and nothing else: the
    core's modules may be split or renamed without breaking one."""
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".tmpl":
        source = re.sub(r"\$\{\w+\}", "x", source)  # the scaffold's placeholders
    found = core_imports(source)
    assert not found, f"{path.relative_to(REPO)} imports core internals: " + ", ".join(
        f"line {line}: {what}" for line, what in found)


def test_every_public_name_resolves():
    for name in airo.core.__all__:
        assert getattr(airo.core, name) is not None or name == "__version__"


# -- no plugin reads another's options ---------------------------------------------------------------

def _entry_point_of_module() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {module.rsplit(".", 1)[-1]: name for name, module in project["entry-points"]["airo"].items()}


def options_read(source: str) -> list[tuple[int, str, str]]:
    """``(line, "get"|"section", name)`` for each ``config.get("name")`` / ``config.section("name")``
    on a TrainConfig (a receiver named ``config`` or ``*.config``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "section")
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            receiver = ast.unparse(node.func.value)
            if receiver == "config" or receiver.endswith(".config"):
                found.append((node.lineno, node.func.attr, node.args[0].value))
    return found


def test_the_options_check_sees_both_forms():
    sample = 'config.get("bits")\nctx.config.section("merge")\nmodel_config.get("bits")\nconfig.get(name)\n'
    assert options_read(sample) == [(1, "get", "bits"), (2, "section", "merge")]


@pytest.mark.parametrize("path", sorted((REPO / "plugins").glob("*.py")), ids=lambda p: p.name)
def test_plugins_read_only_their_own_and_airos_options(path, airo_env):
    """A plugin reads airo's options and its own; what another plugin decides comes through
    the contract (a loader's ``produces``, ``ctx.loaded.output``, the training record), so
    blocking or replacing that plugin cannot break this one. Library modules may read
    airo's options only."""
    from airo.core import all_flags, get_registry

    flags = all_flags()
    sections = {name: entry.plugin for name, entry in get_registry().options.items()}
    me = _entry_point_of_module().get(path.stem)
    foreign = []
    for line, how, name in options_read(path.read_text(encoding="utf-8")):
        if how == "get":
            owner = flags[name].plugin if name in flags else None
        else:
            owner = "" if name in ("model", "data", "run", "training") else sections.get(name)
        if owner not in ("", me, None):
            foreign.append(f"line {line}: config.{how}({name!r}) belongs to the plugin {owner!r}")
    assert not foreign, f"plugins/{path.name} reads another plugin's options: " + "; ".join(foreign)


# -- the core names no built-in command ---------------------------------------------------------------

def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_core_prints_no_builtin_command():
    """What to do after a run comes from the plugins that own the commands (register_next_steps)."""
    found = [f"{path.relative_to(REPO)}:{line}" for path in sorted((REPO / "core").rglob("*.py"))
             for line, text in _code_strings(path)
             if any(command in text for command in ("airo chat", "airo generate", "airo plot", "airo export"))]
    assert not found, f"the core names built-in commands: {found}"


def test_next_steps_come_from_the_plugins(airo_env, monkeypatch):
    from airo.core import TrainResult
    from airo.core.plugins import reset_plugin_manager

    result = TrainResult(output_dir="out", working_dir="w", outputs={"adapter": "out"})
    text = result.summary()
    assert "Next:" in text and "airo chat out" in text and "airo plot w" in text
    monkeypatch.setenv("AIRO_DISABLE_PLUGINS", "inference")
    reset_plugin_manager()
    text = result.summary()
    assert "airo chat" not in text and "airo plot w" in text
    monkeypatch.setenv("AIRO_DISABLE_PLUGINS", "inference,plot")
    reset_plugin_manager()
    assert "Next:" not in result.summary()


def test_a_failing_next_step_is_one_line(airo_plugin):
    from airo.core import TrainResult, hookimpl

    class Broken:
        @hookimpl
        def register_next_steps(self, register):
            register("t-broken", lambda result: 1 / 0)

    airo_plugin(Broken(), name="broken-steps")
    text = TrainResult(output_dir="out", working_dir="w", outputs={"adapter": "out"}).summary()
    assert "broken-steps" in text and "ZeroDivisionError" in text and "airo chat out" in text
