"""The plugin system: discovery through real entry points, failures, collisions, blocking,
the registry, and the test helpers plugin authors use.

Fake distributions are built without pip: a ``NAME-1.0.dist-info`` folder (METADATA and
entry_points.txt) plus the module, in a folder put on PYTHONPATH of an ``airo``
subprocess; importlib.metadata discovers dist-info folders on sys.path.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import json
import os
import subprocess
import dataclasses
import sys
import textwrap
from pathlib import Path

import pytest

from airo.core import Conversation, LoadedModel, Message, PluginError, Segment, api, hookimpl, hookspecs
from airo.core.plugins import (
    ENTRY_POINT_GROUP,
    DuplicateName,
    PluginWarning,
    get_plugin_manager,
    get_registry,
)
from airo.core.testing import registered_plugin
from conftest import EXAMPLE_SITE_VAR
from airo.core.types import ActionOutput

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = REPO / "examples" / "airo-plugin-example"
EXAMPLE_DIST = "airo-plugin-example"
HEAVY = ("torch", "transformers", "datasets")


# -- helpers -------------------------------------------------------------------------------

def _env(site: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AIRO_STRICT_PLUGINS", "AIRO_DISABLE_PLUGINS", "PYTHONPATH", "PYTEST_ADDOPTS")}
    # what is installed: the example plugin (conftest installs it for the session), plus `site`
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site) if site else None, os.environ.get(EXAMPLE_SITE_VAR)]))
    env.update(extra)
    return env


def airo(*args: str, site: Path | None = None, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m airo.core ARGS`` (what the ``airo`` script runs) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "airo.core", *args], capture_output=True, text=True,
                          env=_env(site, **env), cwd=cwd, timeout=300)


def fake_dist(site: Path, dist: str, entry_point: str, module: str, source: str, version: str = "1.0") -> Path:
    """An installed distribution ``dist`` whose entry point ``entry_point`` (group airo) is ``module``."""
    # The folder name uses the normalised name, as installers write it (importlib.metadata
    # tells distributions apart by it).
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_point} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    return site


def warning_lines(stderr: str, *needles: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:") and all(n in line for n in needles)]


FORMAT_PLUGIN = """
    from airo.core import hookimpl

    @hookimpl
    def register_dataset_formats(register):
        register({name!r}, lambda record: None, description="fake")
"""


@pytest.fixture(scope="module")
def example_dist():
    try:
        return importlib_metadata.distribution(EXAMPLE_DIST)
    except importlib_metadata.PackageNotFoundError:
        pytest.fail(f"the example plugin is not installed: pip install -e {EXAMPLE_DIR.relative_to(REPO)}")


# -- discovery of the example plugin through its real, pip-installed entry point ------------

def test_example_entry_point_is_installed(example_dist):
    eps = {ep.name: ep for ep in example_dist.entry_points if ep.group == ENTRY_POINT_GROUP}
    assert eps["example"].value == "airo_plugin_example"


def test_airo_list_formats_shows_example_plugin(example_dist, tmp_path):
    result = airo("list", "formats", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next((l for l in result.stdout.splitlines() if l.startswith("example-qa ")), None)
    assert line is not None, result.stdout
    assert "(example)" in line and "[template: example-qa]" in line
    assert "Traceback" not in result.stderr


def test_airo_plugins_shows_distribution_and_version(example_dist, tmp_path):
    result = airo("plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    infos = {info["name"]: info for info in json.loads(result.stdout)}
    example = infos["example"]
    assert example["distribution"] == EXAMPLE_DIST
    assert example["version"] == example_dist.version
    assert example["provides"] == {"formats": ["example-qa"], "templates": ["example-qa"]}
    assert example["error"] is None and not example["blocked"]
    # The built-ins are listed the same way, from airo's own distribution.
    for name in ("loaders", "actions", "merge"):
        assert infos[name]["distribution"] == "airo"


def test_example_plugin_usable_from_python(example_dist, airo_env):
    registry = api.registry()
    fmt = registry.get("formats", "example-qa")
    conv = fmt.converter({"question": "2+2?", "answer": "4"})
    template = registry.get("templates", fmt.default_template).template
    segments = template.render(conv, bos_token="<s>", eos_token="</s>")
    assert "".join(s.text for s in segments) == "<s>Q: 2+2?\nA: 4</s>"
    assert [s.text for s in segments if s.reply] == ["4</s>"]
    with pytest.raises(ValueError):
        fmt.converter({"question": "2+2?"})


@pytest.mark.slow
def test_example_plugin_usable_from_the_cli(example_dist, tiny_tokenizer_dir, tmp_path):
    """What a user does after `pip install airo-plugin-example`: name the format and go."""
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "2+2?", "answer": "4"}\n'
                    '{"question": "Capital of France?", "answer": "Paris", "system": "Be brief."}\n')
    result = airo("preview", "--dataset", str(data), "--dataset_format", "example-qa", "--model_name_or_path",
                  tiny_tokenizer_dir, "--eval_dataset_size", "0", "-n", "2", "--json", cwd=tmp_path,
                  AIRO_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)
    assert "Q: 2+2?\nA: 4</s>" in first["text"]
    assert "".join(t["text"] for t in first["tokens"] if t["trained"]) == "4</s>"
    assert "Be brief.\n\nQ: Capital of France?\nA: Paris</s>" in second["text"]


@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_example_plugin_own_tests_pass(example_dist):
    """The example's tests, run the way its author would (they use airo.core.testing)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=EXAMPLE_DIR, capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


# -- failures, collisions, blocking (real entry points of fake distributions) ---------------

def test_broken_plugin_warns_once_and_cli_works(tmp_path):
    site = fake_dist(tmp_path / "site", "fakebroken", "broken", "fakebroken_mod",
                     "raise RuntimeError('boom at import')\n")
    result = airo("list", "formats", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    about = [line for line in result.stderr.splitlines() if "boom at import" in line]
    assert len(about) == 1, result.stderr
    assert about[0].startswith("warning:")
    assert "'broken'" in about[0] and "fakebroken 1.0" in about[0] and "RuntimeError: boom at import" in about[0]
    assert "AIRO_DISABLE_PLUGINS=broken silences this" in about[0]
    assert "example-qa" in result.stdout  # everything else still loads

    strict = airo("list", "formats", site=site, cwd=tmp_path, AIRO_STRICT_PLUGINS="1")
    assert strict.returncode != 0
    assert "error:" in strict.stderr and "'broken'" in strict.stderr and "boom at import" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_plugin_raising_in_register_hook(tmp_path):
    site = fake_dist(tmp_path / "site", "fakeraise", "raiser", "fakeraise_mod", """
        from airo.core import hookimpl

        @hookimpl
        def register_dataset_formats(register):
            register("never-registered", lambda record: None)
            raise RuntimeError("boom in hook")
    """)
    result = airo("list", "formats", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    about = warning_lines(result.stderr, "boom in hook")
    assert len(about) == 1, result.stderr
    assert "'raiser'" in about[0] and "fakeraise" in about[0]
    assert "never-registered" not in result.stdout  # a failed plugin registers nothing
    assert "example-qa" in result.stdout

    strict = airo("list", "formats", site=site, cwd=tmp_path, AIRO_STRICT_PLUGINS="1")
    assert strict.returncode != 0
    assert "error:" in strict.stderr and "boom in hook" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_same_name_from_two_distributions_is_dropped_from_both(tmp_path):
    """Neither wins silently: the user is told how to block each side and chooses."""
    site = tmp_path / "site"
    fake_dist(site, "fakedup-one", "dup_one", "fakedup_one", FORMAT_PLUGIN.format(name="dup-format"))
    fake_dist(site, "fakedup-two", "dup_two", "fakedup_two", FORMAT_PLUGIN.format(name="dup-format"))
    result = airo("list", "formats", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    about = warning_lines(result.stderr, "'dup-format'")
    assert len(about) == 1, result.stderr
    for side in ("plugin 'dup_one' (distribution fakedup-one 1.0; AIRO_DISABLE_PLUGINS=dup_one blocks it)",
                 "plugin 'dup_two' (distribution fakedup-two 1.0; AIRO_DISABLE_PLUGINS=dup_two blocks it)"):
        assert side in about[0], about[0]
    assert "neither is used" in about[0]
    assert "dup-format" not in result.stdout and "example-qa" in result.stdout

    chosen = airo("list", "formats", site=site, cwd=tmp_path, AIRO_DISABLE_PLUGINS="dup_two")
    assert chosen.returncode == 0 and not warning_lines(chosen.stderr, "dup-format"), chosen.stderr
    assert "dup-format" in chosen.stdout and "(dup_one)" in chosen.stdout

    strict = airo("list", "formats", site=site, cwd=tmp_path, AIRO_STRICT_PLUGINS="1")
    assert strict.returncode != 0
    assert strict.stderr.startswith("error:") and "'dup-format'" in strict.stderr
    assert "fakedup-one" in strict.stderr and "fakedup-two" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_same_entry_point_name_from_two_distributions(tmp_path):
    site = tmp_path / "site"
    fake_dist(site, "faketwin-one", "twin", "faketwin_one", FORMAT_PLUGIN.format(name="twin-one"))
    fake_dist(site, "faketwin-two", "twin", "faketwin_two", FORMAT_PLUGIN.format(name="twin-two"))
    result = airo("list", "formats", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    about = warning_lines(result.stderr, "'twin'", "faketwin-one", "faketwin-two", "neither is loaded")
    assert len(about) == 1, result.stderr
    assert "twin-one" not in result.stdout and "twin-two" not in result.stdout and "example-qa" in result.stdout
    strict = airo("list", "formats", site=site, cwd=tmp_path, AIRO_STRICT_PLUGINS="1")
    assert strict.returncode != 0
    assert "'twin'" in strict.stderr and "faketwin-one" in strict.stderr and "faketwin-two" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_misspelt_hook_is_reported_and_skipped(tmp_path):
    site = fake_dist(tmp_path / "site", "fakemisspelt", "misspelt", "fakemisspelt_mod", """
        from airo.core import hookimpl

        @hookimpl
        def register_prompt_templates(register):  # correct, but the plugin is skipped as a whole
            register("never-template", object())

        @hookimpl
        def register_dataset_format(register):  # the hook is register_dataset_formats
            register("never", lambda record: None)
    """)
    result = airo("list", "formats", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    about = warning_lines(result.stderr, "register_dataset_format")
    assert len(about) == 1, result.stderr
    assert "plugin 'misspelt' (distribution fakemisspelt 1.0)" in about[0]
    assert "(did you mean register_dataset_formats?)" in about[0]
    assert "airo's hooks are " + ", ".join(sorted(_hook_names())) in about[0]
    assert "AIRO_DISABLE_PLUGINS=misspelt silences this" in about[0]
    assert "example-qa" in result.stdout and "never" not in result.stdout
    infos = {i["name"]: i for i in json.loads(airo("plugins", "--json", site=site, cwd=tmp_path).stdout)}
    assert "register_dataset_format" in infos["misspelt"]["error"] and infos["misspelt"]["provides"] == {}

    strict = airo("list", "formats", site=site, cwd=tmp_path, AIRO_STRICT_PLUGINS="1")
    assert strict.returncode != 0
    assert strict.stderr.startswith("error:")
    assert "register_dataset_format" in strict.stderr and "fakemisspelt" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_disable_plugins_env_var(tmp_path):
    site = fake_dist(tmp_path / "site", "fakebroken", "broken", "fakebroken_mod",
                     "raise RuntimeError('boom at import')\n")
    result = airo("plugins", "--json", site=site, cwd=tmp_path, AIRO_DISABLE_PLUGINS="example, broken,loaders")
    assert result.returncode == 0, result.stderr
    assert "boom at import" not in result.stderr  # a blocked plugin is not even imported
    infos = {info["name"]: info for info in json.loads(result.stdout)}
    assert infos["example"]["blocked"] and infos["example"]["provides"] == {}
    assert infos["broken"]["blocked"] and infos["broken"]["error"] is None
    # The core names no built-in: even the model loaders can be blocked (training then says
    # that no loader applies; test_train.py::test_select_loader)
    assert infos["loaders"]["blocked"] and infos["loaders"]["provides"] == {}


def test_plugin_commands_appear_under_airo(tmp_path):
    site = fake_dist(tmp_path / "site", "fakecmd", "cmd", "fakecmd_mod", """
        import click
        from airo.core import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            @click.option("--name", default="world")
            def hello(name):
                "Say hello (a plugin command)."
                click.echo(f"hello {name} from a plugin")
    """)
    help_result = airo("--help", site=site, cwd=tmp_path)
    assert help_result.returncode == 0, help_result.stderr
    assert "hello" in help_result.stdout and "Say hello (a plugin command)." in help_result.stdout
    result = airo("hello", "--name", "airo", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello airo from a plugin"


def test_plugin_failing_to_add_commands(tmp_path):
    site = fake_dist(tmp_path / "site", "fakebadcmd", "badcmd", "fakebadcmd_mod", """
        from airo.core import hookimpl

        @hookimpl
        def register_commands(cli):
            raise RuntimeError("boom in commands")
    """)
    result = airo("list", "formats", site=site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    about = warning_lines(result.stderr, "boom in commands")
    assert len(about) == 1 and "'badcmd'" in about[0] and "fakebadcmd" in about[0], result.stderr
    strict = airo("list", "formats", site=site, cwd=tmp_path, AIRO_STRICT_PLUGINS="1")
    assert strict.returncode != 0 and "error:" in strict.stderr and "boom in commands" in strict.stderr
    assert "Traceback" not in strict.stderr


# -- airo --help and plugin loading stay free of torch -------------------------------------

_HEAVY_PROBE = f"""
import json, sys
HEAVY = {HEAVY!r}
def loaded():
    return sorted(m for m in HEAVY if m in sys.modules)
out = {{}}
import airo.core, airo.core.cli
out["import"] = loaded()
try:
    airo.core.cli.main(["--help"])
except SystemExit as exc:
    out["help_exit"] = exc.code
out["help"] = loaded()
out["help_recipe"] = "airo.core.training.recipe" in sys.modules
import importlib.metadata
for ep in importlib.metadata.entry_points(group="airo"):
    ep.load()
out["entry_points"] = loaded()
from airo.core.plugins import get_registry
get_registry()
out["registry"] = loaded()
print("\\nPROBE " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def heavy_probe(tmp_path_factory):
    result = subprocess.run([sys.executable, "-c", _HEAVY_PROBE], capture_output=True, text=True, env=_env(),
                            cwd=tmp_path_factory.mktemp("probe"), timeout=300)
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("PROBE "))
    return json.loads(line[len("PROBE "):]), result.stdout


def test_help_does_not_import_torch(heavy_probe):
    probe, stdout = heavy_probe
    assert "Commands:" in stdout and probe["help_exit"] == 0
    assert probe["import"] == [], "importing airo.core imports " + ", ".join(probe["import"])
    assert probe["help"] == [], "airo --help imports " + ", ".join(probe["help"])
    # nor the training recipe (a plugin importing one small module of airo.core.training did)
    assert not probe["help_recipe"], "airo --help imports airo.core.training.recipe"


def test_loading_plugins_does_not_import_torch(heavy_probe):
    probe, _ = heavy_probe
    assert probe["entry_points"] == [], ("a plugin module imports " + ", ".join(probe["entry_points"]) +
                                         " at import time; move the import inside the function that needs it")
    assert probe["registry"] == [], ("a plugin's register hook imports " + ", ".join(probe["registry"]) +
                                     "; `airo list` should stay fast")


# -- the registry from Python, and the helpers for plugin authors ------------------------------

class Converter:
    def __call__(self, record):
        return Conversation([Message("user", record["q"]), Message("assistant", record["a"])])


class EchoTemplate:
    chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"

    def render(self, conversation, *, bos_token, eos_token):
        return [Segment(bos_token + conversation.messages[0].content),
                Segment(conversation.messages[1].content + eos_token, reply=True)]


@dataclasses.dataclass
class TOptions:
    t_option: int = dataclasses.field(default=1, metadata={"help": "test option"})


class TObjective:
    def prepare(self, config, tokenizer, *, rejects_dir=None):
        return "prepared"

    def training_data(self, config, train, tokenizer, model, args, trainer_cls):
        return train, None, trainer_cls, None


class EveryHook:
    """Implements every hook airo defines (a new hook spec must be added here)."""

    @hookimpl
    def register_dataset_formats(self, register):
        register("t-format", Converter(), default_template="t-template", description="test format")

    @hookimpl
    def register_prompt_templates(self, register):
        register("t-template", EchoTemplate(), description="test template")

    @hookimpl
    def register_model_loaders(self, register):
        register("t-loader", lambda config: LoadedModel(model=None, tokenizer=None), description="test loader")

    @hookimpl
    def register_tokenizer_patches(self, register):
        register("t-patch", lambda tokenizer, config: tokenizer, detect=lambda config: False)

    @hookimpl
    def register_post_train_actions(self, register):
        register("t-action", lambda ctx: None, order=7, auto=lambda config: True,
                 outputs=lambda config: [ActionOutput("--t_dir", "t-out", 1)], description="test action")

    @hookimpl
    def register_options(self, register):
        register("t-options", TOptions, description="test options")

    @hookimpl
    def register_evaluations(self, register):
        register("t-evaluation", lambda ctx: {"t_metric": 1.0}, description="test evaluation")

    @hookimpl
    def register_callbacks(self, register):
        register("t-callback", lambda ctx: None, description="test callback")

    @hookimpl
    def register_next_steps(self, register):
        register("t-next", lambda result: [], order=7, description="test next steps")

    @hookimpl
    def register_objectives(self, register):
        register("t-objective", TObjective(), record_kind="preference", description="test objective")

    @hookimpl
    def register_commands(self, cli):
        pass


def _hook_names() -> set[str]:
    return {name for name in dir(hookspecs) if name.startswith("register_")}


def test_every_hook_is_exercised():
    implemented = {name for name in dir(EveryHook) if name.startswith("register_")}
    assert implemented == _hook_names()


def test_registered_plugin_context_manager(airo_env):
    assert "t-format" not in get_registry().formats
    with registered_plugin(EveryHook(), name="every-hook") as registry:
        fmt = registry.get("formats", "t-format")
        assert (fmt.plugin, fmt.default_template, fmt.description) == ("every-hook", "t-template", "test format")
        assert fmt.converter({"q": "hi", "a": "yo"}).turns() == [("hi", "yo")]
        assert isinstance(registry.get("templates", "t-template").template, EchoTemplate)
        assert registry.get("loaders", "t-loader").load(None).model is None
        patch = registry.get("patches", "t-patch")
        assert patch.detect(None) is False and patch.apply("tok", None) == "tok"
        action = registry.get("actions", "t-action")
        assert action.order == 7 and action.auto(None) is True
        assert action.outputs(None) == [ActionOutput("--t_dir", "t-out", 1)]
        assert registry.get("options", "t-options").args is TOptions
        evaluation = registry.get("evaluations", "t-evaluation")
        assert (evaluation.run(None), evaluation.description) == ({"t_metric": 1.0}, "test evaluation")
        assert registry.get("callbacks", "t-callback").description == "test callback"
        objective = registry.get("objectives", "t-objective")
        assert (objective.record_kind, objective.description) == ("preference", "test objective")
        assert objective.objective.prepare(None, None) == "prepared"
        steps = registry.get("next_steps", "t-next")
        assert (steps.lines(None), steps.order, steps.description) == ([], 7, "test next steps")
        info = registry.plugins["every-hook"]
        assert info.distribution == "<registered in code>"
        assert info.provides == {"formats": ["t-format"], "templates": ["t-template"], "loaders": ["t-loader"],
                                 "actions": ["t-action"], "patches": ["t-patch"], "options": ["t-options"],
                                 "evaluations": ["t-evaluation"], "callbacks": ["t-callback"], "next_steps": ["t-next"],
                                 "objectives": ["t-objective"]}
        assert registry is api.registry()
    registry = get_registry()
    assert "t-format" not in registry.formats and "every-hook" not in registry.plugins


def test_registered_plugin_defaults(airo_env):
    class Minimal:
        @hookimpl
        def register_post_train_actions(self, register):
            register("t-minimal", lambda ctx: None)

    with registered_plugin(Minimal()) as registry:
        action = registry.actions["t-minimal"]
        assert (action.order, action.auto, action.description) == (100, None, "")


def test_registered_plugin_accepts_an_installed_plugin(example_dist, airo_env):
    import airo_plugin_example

    with registered_plugin(airo_plugin_example) as registry:
        assert registry.formats["example-qa"].plugin == "example"
    assert "example-qa" in get_registry().formats  # still installed: not unregistered


class FixturePlugin:
    @hookimpl
    def register_dataset_formats(self, register):
        register("t-fixture-format", Converter())


def test_airo_plugin_fixture(airo_plugin):
    registry = airo_plugin(FixturePlugin(), name="fixture-plugin")
    assert registry.formats["t-fixture-format"].plugin == "fixture-plugin"
    registry = airo_plugin(EveryHook())
    assert {"t-fixture-format", "t-format"} <= set(registry.formats)


def test_airo_plugin_fixture_unregisters_after_the_test():
    # Runs after test_airo_plugin_fixture (file order): its plugins are gone.
    registry = get_registry()
    assert "t-fixture-format" not in registry.formats and "fixture-plugin" not in registry.plugins


def test_registry_queries(example_dist, airo_env):
    registry = api.registry()
    assert registry.kind("formats") is registry.formats
    for kind in ("formats", "templates", "loaders", "actions", "patches"):
        assert isinstance(registry.kind(kind), dict)
    with pytest.raises(PluginError, match="unknown kind 'format'"):
        registry.kind("format")
    with pytest.raises(PluginError, match=r"unknown dataset format 'example-q'\. Did you mean 'example-qa'\?"):
        registry.get("formats", "example-q")
    with pytest.raises(PluginError, match="unknown prompt template 'no-such-template'"):
        registry.get("templates", "no-such-template")
    infos = {info.name: info for info in api.plugins()}
    assert infos["example"].distribution == EXAMPLE_DIST
    assert infos["example"].provides["formats"] == ["example-qa"]


class Clash:
    @hookimpl
    def register_dataset_formats(self, register):
        register("example-qa", Converter())
        register("t-clash-only", Converter())


def test_duplicate_name_in_code_names_both_distributions(example_dist, airo_env):
    with pytest.warns(PluginWarning) as caught:
        with registered_plugin(Clash(), name="clash") as registry:
            assert "example-qa" not in registry.formats  # neither plugin gets it
            assert registry.formats["t-clash-only"].plugin == "clash"  # the rest of the plugin is kept
            assert registry.plugins["clash"].provides == {"formats": ["t-clash-only"]}
            assert registry.plugins["example"].provides == {"templates": ["example-qa"]}
    message = next(str(w.message) for w in caught if "'example-qa'" in str(w.message))
    assert EXAMPLE_DIST in message and "<registered in code>" in message
    assert "AIRO_DISABLE_PLUGINS=example blocks it" in message and "AIRO_DISABLE_PLUGINS=clash blocks it" in message
    assert get_registry().formats["example-qa"].plugin == "example"  # the clash was undone


def test_duplicate_name_in_code_strict(example_dist, airo_env, monkeypatch):
    monkeypatch.setenv("AIRO_STRICT_PLUGINS", "1")
    with pytest.raises(DuplicateName, match=f"'example-qa'.*{EXAMPLE_DIST}.*<registered in code>"):
        with registered_plugin(Clash(), name="clash"):
            pass
    monkeypatch.delenv("AIRO_STRICT_PLUGINS")
    assert get_registry().formats["example-qa"].plugin == "example"


class Twice:
    @hookimpl
    def register_prompt_templates(self, register):
        register("t-twice", EchoTemplate())
        register("t-twice", EchoTemplate())

    @hookimpl
    def register_dataset_formats(self, register):
        register("t-twice-format", Converter())


def test_same_name_twice_in_one_plugin_skips_the_plugin(airo_env):
    with pytest.warns(PluginWarning, match=r"'twice'.*registers the prompt template 't-twice' twice.*skipped"):
        with registered_plugin(Twice(), name="twice") as registry:
            assert "t-twice" not in registry.templates and "t-twice-format" not in registry.formats
            assert "twice" in registry.plugins["twice"].error


def test_same_name_twice_in_one_plugin_strict(airo_env, monkeypatch):
    monkeypatch.setenv("AIRO_STRICT_PLUGINS", "1")
    with pytest.raises(DuplicateName, match="'t-twice' twice"):
        with registered_plugin(Twice(), name="twice"):
            pass


@pytest.mark.parametrize("source, message", [
    ("@hookimpl\ndef register_dataset_format(register): pass",     # misspelt hook name
     r"implements register_dataset_format \(did you mean register_dataset_formats\?\), a hook airo does not define"),
    ("@hookimpl\ndef register_dataset_formats(registry): pass",    # misspelt argument
     r"does not match airo's hook specs: .*'registry'.*; airo calls register_dataset_formats\(register\)"),
])
def test_misspelt_hook_in_code(airo_env, source, message):
    """Registered explicitly in code, a bad plugin is an error at once (not a warning)."""
    namespace = {"hookimpl": hookimpl}
    exec(source, namespace)
    plugin = type("Misspelt", (), {k: staticmethod(v) for k, v in namespace.items() if k.startswith("register_")})
    with pytest.raises(PluginError, match=r"plugin 'misspelt' \(distribution <registered in code>\) " + message):
        with registered_plugin(plugin, name="misspelt"):
            pass
    assert "misspelt" not in get_registry().plugins
    assert not get_plugin_manager().pm.is_registered(plugin)


class RaisesInHook:
    @hookimpl
    def register_dataset_formats(self, register):
        register("t-half", Converter())
        raise RuntimeError("boom in hook")


def test_hook_raising_in_code_warns(airo_env):
    with pytest.warns(PluginWarning, match=r"'raises'.*failed to register: RuntimeError: boom in hook"):
        with registered_plugin(RaisesInHook(), name="raises") as registry:
            assert "t-half" not in registry.formats
            assert registry.plugins["raises"].error == "RuntimeError: boom in hook"


def test_hook_raising_in_code_strict(airo_env, monkeypatch):
    monkeypatch.setenv("AIRO_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="boom in hook"):
        with registered_plugin(RaisesInHook(), name="raises"):
            pass


def test_contract_violations_are_reported(airo_env):
    class NoChatTemplate:
        def render(self, conversation, *, bos_token, eos_token):
            return []

    class Bad:
        @hookimpl
        def register_prompt_templates(self, register):
            register("t-bad", NoChatTemplate())

    with pytest.warns(PluginWarning, match="must have a render\\(\\) method and a chat_template string"):
        with registered_plugin(Bad(), name="bad") as registry:
            assert "t-bad" not in registry.templates


def test_broken_plugin_in_process(tmp_path, monkeypatch, airo_env):
    """What embedding tools see: a PluginWarning, and the error on the plugin's info."""
    site = fake_dist(tmp_path / "site", "fakebroken", "broken", "fakebroken_inproc",
                     "raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.warns(PluginWarning, match=r"'broken' \(distribution fakebroken 1\.0\) failed to import "
                                           r"fakebroken_inproc: RuntimeError: boom at import"):
        registry = get_registry()
    assert registry.plugins["broken"].error == "RuntimeError: boom at import"
    assert registry.plugins["broken"].distribution == "fakebroken"

