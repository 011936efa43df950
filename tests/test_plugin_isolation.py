"""A bad plugin is reported and skipped, never the end of every airo command; a plugin
that fails at run time is named in the error.

The installed cases use real entry points of throwaway distributions (``fake_dist`` from
test_plugins.py) in an ``airo`` subprocess; the run-time wrapping is checked in process.
"""

from __future__ import annotations

import dataclasses

import json

import pytest

from airo.core import ConfigError, Conversation, LoadedModel, Message, PluginError, Segment, hookimpl, hookspecs
from airo.core.plugins import (
    DuplicateName,
    PluginCallError,
    PluginWarning,
    describe_exception,
    get_registry,
    out_of_memory,
)
from airo.core.registry import KIND_TABLE
from airo.core.testing import registered_plugin
from test_plugins import FORMAT_PLUGIN, airo, fake_dist, warning_lines

# -- installed plugins that break at load time --------------------------------------------------

EXITS_AT_IMPORT = "import sys\nsys.exit('no GPU here')\n"

EXITS_IN_HOOK = """
    import sys
    from airo.core import hookimpl

    @hookimpl
    def register_dataset_formats(register):
        register("exit-format", lambda record: None)
        sys.exit()
"""

CLAIMS_BUILTIN_NAME = """
    from airo.core import hookimpl

    @hookimpl
    def register_dataset_formats(register):
        register("alpaca", lambda record: None, description="an impostor")
        register("own-format", lambda record: None, description="its own")
"""


def test_sys_exit_at_import_is_reported_and_skipped(tmp_path):
    site = fake_dist(tmp_path / "site", "fakeexit", "exiter", "fakeexit_mod", EXITS_AT_IMPORT, version="2.3")
    result = airo("list", "formats", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    about = warning_lines(result.stderr, "exiter")
    assert about == ["warning: plugin 'exiter' (distribution fakeexit 2.3) failed to import fakeexit_mod: "
                     "SystemExit: sys.exit('no GPU here') was called; the plugin is skipped "
                     "(AIRO_DISABLE_PLUGINS=exiter silences this)"], result.stderr
    assert "example-qa" in result.stdout and "alpaca" in result.stdout

    silenced = airo("list", "formats", site=site, cwd=tmp_path, AIRO_DISABLE_PLUGINS="exiter")
    assert silenced.returncode == 0 and silenced.stderr == "", silenced.stderr

    strict = airo("list", "formats", site=site, cwd=tmp_path, AIRO_STRICT_PLUGINS="1")
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert strict.stderr.startswith("error: plugin 'exiter' (distribution fakeexit 2.3) failed to import")


def test_sys_exit_in_a_register_hook_is_reported_and_skipped(tmp_path):
    site = fake_dist(tmp_path / "site", "fakeexithook", "exithook", "fakeexithook_mod", EXITS_IN_HOOK)
    result = airo("list", "formats", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    about = warning_lines(result.stderr, "'exithook'", "failed to register: SystemExit: sys.exit(None) was called")
    assert len(about) == 1, result.stderr
    assert "exit-format" not in result.stdout and "example-qa" in result.stdout
    strict = airo("list", "formats", site=site, cwd=tmp_path, AIRO_STRICT_PLUGINS="1")
    assert strict.returncode == 1 and "SystemExit" in strict.stderr and "Traceback" not in strict.stderr


def test_name_of_a_builtin_stays_the_builtins(tmp_path):
    site = fake_dist(tmp_path / "site", "fakeclash", "clasher", "fakeclash_mod", CLAIMS_BUILTIN_NAME)
    result = airo("list", "formats", "--json", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["alpaca"]["plugin"] == "formats"  # the built-in keeps the name
    assert rows["own-format"]["plugin"] == "clasher"  # the rest of the plugin still works
    assert warning_lines(result.stderr, "alpaca") == [
        "warning: plugin 'clasher' (distribution fakeclash 1.0) registers the dataset format 'alpaca', which the "
        "built-in plugin 'formats' has; the built-in keeps it and this one is dropped: rename it "
        "(AIRO_DISABLE_PLUGINS=clasher silences this)"], result.stderr
    infos = {i["name"]: i for i in json.loads(airo("plugins", "--json", site=site, cwd=tmp_path).stdout)}
    assert infos["clasher"]["provides"] == {"formats": ["own-format"]} and infos["clasher"]["error"] is None

    strict = airo("list", "formats", site=site, cwd=tmp_path, AIRO_STRICT_PLUGINS="1")
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert strict.stderr.startswith("error: plugin 'clasher'") and "'alpaca'" in strict.stderr


def test_entry_point_named_like_a_builtin(tmp_path):
    site = fake_dist(tmp_path / "site", "fakeloaders", "loaders", "fakeloaders_mod",
                     "raise RuntimeError('never imported')\n")
    result = airo("list", "loaders", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "qlora" in result.stdout and "never imported" not in result.stderr
    about = warning_lines(result.stderr, "fakeloaders 1.0", "'loaders'", "airo's own is loaded")
    assert len(about) == 1, result.stderr
    strict = airo("list", "loaders", site=site, cwd=tmp_path, AIRO_STRICT_PLUGINS="1")
    assert strict.returncode == 1 and "fakeloaders" in strict.stderr and "Traceback" not in strict.stderr


COMMAND_PLUGIN = """
    import click
    from airo.core import hookimpl

    @hookimpl
    def register_commands(cli):
        @cli.command({command!r})
        def command():
            "{doc}"
            click.echo({doc!r})
"""


def test_plugin_command_cannot_replace_airos(tmp_path):
    site = fake_dist(tmp_path / "site", "fakehijack", "hijack", "fakehijack_mod",
                     COMMAND_PLUGIN.format(command="train", doc="hijacked"))
    result = airo("train", "--help", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hijacked" not in result.stdout and "Train: airo train" in result.stdout
    about = warning_lines(result.stderr, "plugin 'hijack' (distribution fakehijack 1.0) adds the command 'train'")
    assert len(about) == 1 and "AIRO_DISABLE_PLUGINS=hijack silences this" in about[0], result.stderr


def test_same_command_from_several_plugins_is_dropped_from_all(tmp_path):
    site = tmp_path / "site"
    for n in ("one", "two", "three"):
        fake_dist(site, f"fakecmd-{n}", f"cmd_{n}", f"fakecmd_{n}", COMMAND_PLUGIN.format(command="hello", doc=n))
    result = airo("hello", site=site, cwd=tmp_path)
    assert result.returncode == 2 and "No such command 'hello'" in result.stderr  # a third does not win it
    about = warning_lines(result.stderr, "the command 'hello'", "neither is used")
    assert len(about) == 2, result.stderr
    assert all(f"AIRO_DISABLE_PLUGINS=cmd_{n} blocks it" in result.stderr for n in ("one", "two", "three"))
    chosen = airo("hello", site=site, cwd=tmp_path, AIRO_DISABLE_PLUGINS="cmd_one,cmd_three")
    assert chosen.returncode == 0 and chosen.stdout.strip() == "two" and chosen.stderr == ""


def test_three_plugins_one_name(tmp_path):
    """A third claimant does not win the name the first two lost."""
    site = tmp_path / "site"
    for n in ("one", "two", "three"):
        fake_dist(site, f"faketri-{n}", f"tri_{n}", f"faketri_{n}", FORMAT_PLUGIN.format(name="tri-format"))
    result = airo("list", "formats", site=site, cwd=tmp_path)
    assert result.returncode == 0 and "tri-format" not in result.stdout
    about = warning_lines(result.stderr, "'tri-format'", "tri_one", "tri_two", "tri_three")
    assert len(about) == 1, result.stderr


# -- run-time failures name the plugin ------------------------------------------------------------

BAD_PATCH = """
    from airo.core import hookimpl

    def detect(config):
        return config.model.no_such_option  # the plugin's bug

    @hookimpl
    def register_tokenizer_patches(register):
        register("bad-patch", lambda tokenizer, config: tokenizer, detect=detect)
"""


@pytest.mark.slow  # two subprocesses that import transformers
def test_failing_plugin_at_run_time_from_the_cli(tmp_path, tiny_tokenizer_dir):
    site = fake_dist(tmp_path / "site", "fakebadpatch", "badpatch", "fakebadpatch_mod", BAD_PATCH, version="0.4")
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "output": "yo"}\n')
    args = ("preview", "--dataset", str(data), "--dataset_format", "alpaca", "--model_name_or_path",
            tiny_tokenizer_dir, "--eval_dataset_size", "0")
    result = airo(*args, site=site, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: plugin 'badpatch' (distribution fakebadpatch 0.4): tokenizer patch "
                                    "'bad-patch' detect() failed: AttributeError: ")
    assert result.stderr.rstrip().endswith("no_such_option' (set AIRO_DEBUG=1 for the traceback)")
    assert len(result.stderr.splitlines()) == 1, result.stderr

    debug = airo(*args, site=site, cwd=tmp_path, AIRO_DEBUG="1")
    assert debug.returncode == 1 and debug.stderr.startswith("Traceback (most recent call last):")
    assert "fakebadpatch_mod.py" in debug.stderr and "no_such_option" in debug.stderr  # the plugin's own frame


class RunTime:
    """Every guarded callable, each failing the way the test sets in ``RunTime.fail``."""

    fail: BaseException = TypeError("bad arguments")

    def _raise(self, *args):
        raise RunTime.fail

    @hookimpl
    def register_model_loaders(self, register):
        register("rt-loader", self._raise)

    @hookimpl
    def register_post_train_actions(self, register):
        register("rt-action", self._raise, auto=self._raise)

    @hookimpl
    def register_tokenizer_patches(self, register):
        register("rt-patch", self._raise, detect=self._raise)


GUARDED = [("loaders", "rt-loader", "load", "model loader 'rt-loader' load()", 1),
           ("actions", "rt-action", "run", "post-training action 'rt-action' run()", 1),
           ("actions", "rt-action", "auto", "post-training action 'rt-action' auto()", 1),
           ("patches", "rt-patch", "apply", "tokenizer patch 'rt-patch' apply()", 2),
           ("patches", "rt-patch", "detect", "tokenizer patch 'rt-patch' detect()", 1)]


@pytest.fixture
def run_time(airo_env, airo_plugin, monkeypatch):
    monkeypatch.setattr(RunTime, "fail", TypeError("bad arguments"))
    return airo_plugin(RunTime(), name="rt")


@pytest.mark.parametrize("kind, name, attr, what, nargs", GUARDED)
def test_run_time_error_names_plugin_and_hook(run_time, kind, name, attr, what, nargs):
    call = getattr(run_time.kind(kind)[name], attr)
    with pytest.raises(PluginCallError) as excinfo:
        call(*[None] * nargs)
    assert isinstance(excinfo.value, PluginError)
    assert str(excinfo.value) == f"plugin 'rt' (distribution <registered in code>): {what} failed: " \
                                 "TypeError: bad arguments"
    assert excinfo.value.__cause__ is RunTime.fail  # the traceback is still there


@pytest.mark.parametrize("kind, name, attr, what, nargs", GUARDED)
def test_airo_errors_pass_through_unchanged(run_time, monkeypatch, kind, name, attr, what, nargs):
    monkeypatch.setattr(RunTime, "fail", ConfigError("--bits 4 needs a GPU"))
    with pytest.raises(ConfigError) as excinfo:
        getattr(run_time.kind(kind)[name], attr)(*[None] * nargs)
    assert excinfo.value is RunTime.fail


@pytest.mark.parametrize("fail, expected", [
    (SystemExit(3), PluginCallError),      # a plugin's sys.exit() is its failure ...
    (KeyboardInterrupt(), KeyboardInterrupt),  # ... the user's Ctrl-C is not
    (MemoryError(), MemoryError),          # nor is the machine's limit
])
def test_what_is_not_the_plugins_fault(run_time, monkeypatch, fail, expected):
    monkeypatch.setattr(RunTime, "fail", fail)
    with pytest.raises(expected) as excinfo:
        run_time.loaders["rt-loader"].load(None)
    if expected is PluginCallError:
        assert str(excinfo.value).endswith("load() failed: SystemExit: sys.exit(3) was called")


def test_guarded_callables_keep_their_identity(airo_env):
    def load_mine(config):
        """Loads mine."""
        return LoadedModel(model="M", tokenizer="T")

    class Plugin:
        @hookimpl
        def register_model_loaders(self, register):
            register("t-mine", load_mine)

        @hookimpl
        def register_tokenizer_patches(self, register):
            register("t-named-only", lambda tokenizer, config: tokenizer)  # no detect: only when named

    with registered_plugin(Plugin(), name="mine") as registry:
        load = registry.loaders["t-mine"].load
        assert load(None).model == "M"
        assert load.__wrapped__ is load_mine and load.__name__ == "load_mine" and load.__doc__ == "Loads mine."
        assert registry.patches["t-named-only"].detect is None  # the core tests `detect is not None`


def test_converters_and_templates_are_not_wrapped(airo_env):
    """The data pipeline turns their errors into located bad records: they must raise as they are."""
    def converter(record):
        raise ValueError('missing "q"')

    class Template:
        chat_template = ""

        def render(self, conversation, *, bos_token, eos_token):
            return [Segment("x")]

    template = Template()

    class Plugin:
        @hookimpl
        def register_dataset_formats(self, register):
            register("t-raw", converter)

        @hookimpl
        def register_prompt_templates(self, register):
            register("t-raw", template)

    with registered_plugin(Plugin(), name="raw") as registry:
        assert registry.formats["t-raw"].converter is converter
        assert registry.templates["t-raw"].template is template
        with pytest.raises(ValueError, match='missing "q"'):
            registry.formats["t-raw"].converter({})


# -- in process: Ctrl-C is never swallowed, strict mode, the kind table -----------------------------

def test_keyboard_interrupt_while_loading_plugins_propagates(tmp_path, monkeypatch, airo_env):
    site = fake_dist(tmp_path / "site", "fakectrlc", "ctrlc", "fakectrlc_mod", "raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(KeyboardInterrupt):
        get_registry()


def test_keyboard_interrupt_in_a_register_hook_propagates(airo_env):
    class CtrlC:
        @hookimpl
        def register_dataset_formats(self, register):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with registered_plugin(CtrlC(), name="ctrlc"):
            pass


def test_sys_exit_in_a_register_hook_in_code(airo_env, monkeypatch):
    class Exits:
        @hookimpl
        def register_post_train_actions(self, register):
            raise SystemExit(2)

    with pytest.warns(PluginWarning, match=r"'exits'.*failed to register: SystemExit: sys.exit\(2\) was called"):
        with registered_plugin(Exits(), name="exits") as registry:
            assert registry.plugins["exits"].error == "SystemExit: sys.exit(2) was called"
    monkeypatch.setenv("AIRO_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="AIRO_STRICT_PLUGINS is set"):
        with registered_plugin(Exits(), name="exits"):
            pass


def test_builtin_clash_in_code(airo_env, monkeypatch):
    class Impostor:
        @hookimpl
        def register_post_train_actions(self, register):
            register("save", lambda ctx: None)

    with pytest.warns(PluginWarning, match=r"'impostor'.*post-training action 'save'.*built-in plugin 'actions'"):
        with registered_plugin(Impostor(), name="impostor") as registry:
            assert registry.actions["save"].plugin == "actions"
    monkeypatch.setenv("AIRO_STRICT_PLUGINS", "1")
    with pytest.raises(DuplicateName, match="'save'"):
        with registered_plugin(Impostor(), name="impostor"):
            pass


def test_optional_hook_is_not_an_error(airo_env):
    """``optionalhook=True`` is pluggy's way to implement a hook a newer airo may define."""
    class Future:
        @hookimpl(optionalhook=True)
        def register_evaluators(self, register):
            register("t-eval", None)

        @hookimpl
        def register_dataset_formats(self, register):
            register("t-future", lambda record: None)

    with registered_plugin(Future(), name="future") as registry:
        assert "t-future" in registry.formats and registry.plugins["future"].error is None


def test_one_table_row_per_registering_hook():
    hooks = {n for n in dir(hookspecs) if n.startswith("register_")} - {"register_commands"}
    assert {kind.hook for kind in KIND_TABLE} == hooks


class _Template:
    chat_template = ""

    def render(self, conversation, *, bos_token, eos_token):
        return []


@dataclasses.dataclass
class _Options:
    an_option: int = 1


@pytest.mark.parametrize("kind", KIND_TABLE, ids=lambda k: k.name)
def test_messages_use_the_singular_name(airo_env, kind):
    """(Cutting the last letter off the kind's name once printed "patche".)"""
    with pytest.raises(PluginError, match=f"unknown {kind.singular} 'no-such'"):
        get_registry().get(kind.name, "no-such")

    value = _Template() if kind.name == "templates" else _Options if kind.name == "options" else (lambda *args: None)
    extra = {}
    if kind.name == "objectives":  # an objective has methods and names the records it reads
        value = type("Objective", (), {"prepare": lambda *a, **k: None, "training_data": lambda *a, **k: None})()
        extra = {"record_kind": "conversation"}

    def hook(register):
        register("t-twice", value, **extra)
        register("t-twice", value, **extra)

    twice = type("Twice", (), {kind.hook: staticmethod(hookimpl(hook))})
    with pytest.warns(PluginWarning, match=f"registers the {kind.singular} 't-twice' twice"):
        with registered_plugin(twice, name="twice"):
            pass


def test_describe_exception_and_out_of_memory():
    import torch

    assert describe_exception(RuntimeError()) == "RuntimeError"
    assert describe_exception(KeyError("x")) == "KeyError: 'x'"
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory")) and out_of_memory(MemoryError())
    assert not out_of_memory(RuntimeError("CUDA error: an illegal memory access"))
