"""CONTRIBUTING.md documents every hook with its exact signature, and its examples work.

A hook added to core/hookspecs.py without a section here (or without a docstring) fails
these tests, as datasette's test_docs.py does for its hooks.
"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import click
import pytest

from airo.core import hookspecs
from airo.core.testing import registered_plugin

REPO = Path(__file__).resolve().parent.parent
CONTRIBUTING = REPO / "CONTRIBUTING.md"
CI_SCRIPT = REPO / ".ci" / "run"


def hookspec_functions() -> dict[str, types.FunctionType]:
    marker = hookspecs.hookspec.project_name + "_spec"
    return {name: fn for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, marker)}


def signature(fn) -> str:
    return f"{fn.__name__}({', '.join(inspect.signature(fn).parameters)})"


def register_signature(fn) -> str | None:
    """The ``register(...)`` call documented in the hook's docstring, if it has one."""
    match = re.search(r"``(register\(.*?\))``", " ".join((fn.__doc__ or "").split()))
    return match.group(1) if match else None


class Section:
    def __init__(self, level: int, title: str):
        self.level, self.title = level, title
        self.lines: list[str] = []            # body lines up to the next heading of any level
        self.blocks: list[tuple[str, str]] = []  # (language, code) of the fenced blocks in the body


def parse_sections(text: str) -> list[Section]:
    sections = [Section(0, "")]
    fence: str | None = None
    language, code = "", []
    for line in text.splitlines():
        stripped = line.strip()
        if fence is None and stripped.startswith("```"):
            fence, language, code = stripped[:3], stripped[3:].strip(), []
            continue
        if fence is not None and stripped == fence:
            sections[-1].blocks.append((language, "\n".join(code)))
            fence = None
            continue
        if fence is not None:
            code.append(line)
            continue
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*$", line)
        if heading:
            sections.append(Section(len(heading.group(1)), heading.group(2).replace("`", "").strip()))
        else:
            sections[-1].lines.append(line)
    assert fence is None, "CONTRIBUTING.md has an unclosed code fence"
    return sections


def _dedent(code: str) -> str:
    import textwrap

    return textwrap.dedent(code)


@pytest.fixture(scope="module")
def doc() -> str:
    return CONTRIBUTING.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def sections(doc) -> dict[str, Section]:
    return {s.title: s for s in parse_sections(doc)}


def test_hookspecs_found():
    assert {"register_dataset_formats", "register_prompt_templates", "register_model_loaders",
            "register_post_train_actions", "register_commands"} <= set(hookspec_functions())


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_hookspec_has_docstring(name):
    doc = inspect.getdoc(hookspec_functions()[name])
    assert doc and len(doc) > 20, f"hook spec {name} in core/hookspecs.py needs a docstring"


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_hook_documented_with_exact_signature(name, sections):
    fn = hookspec_functions()[name]
    assert name in sections, f"CONTRIBUTING.md needs a section headed `{name}` (under Hook reference)"
    section = sections[name]
    code_lines = {line.strip() for _, code in section.blocks for line in code.splitlines()}
    assert signature(fn) in code_lines, (
        f"the `{name}` section of CONTRIBUTING.md must show the exact signature `{signature(fn)}` in a code block")
    call = register_signature(fn)
    if call is not None:
        assert call in code_lines, (
            f"the `{name}` section of CONTRIBUTING.md must show `{call}` (from the docstring) in a code block")
    assert any(lang == "python" and "@hookimpl" in code for lang, code in section.blocks), (
        f"the `{name}` section of CONTRIBUTING.md needs a worked example (a ```python block with @hookimpl)")


def test_no_documented_hook_is_stale(sections):
    specs = set(hookspec_functions())
    documented = {title for title in sections if re.fullmatch(r"register_\w+", title)}
    assert documented <= specs, f"CONTRIBUTING.md documents hooks that do not exist: {sorted(documented - specs)}"


def test_python_examples_compile(sections):
    for section in sections.values():
        for i, (lang, code) in enumerate(section.blocks):
            if lang == "python":
                compile(_dedent(code), f"CONTRIBUTING.md [{section.title} #{i}]", "exec")


@pytest.mark.parametrize("name", sorted(hookspec_functions()))
def test_hook_examples_register(name, sections, airo_env, monkeypatch):
    """Each worked example, run as a plugin module, registers what it says."""
    import sys

    module = types.ModuleType(f"contributing_example_{name}")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    for lang, code in sections[name].blocks:
        if lang == "python" and "@hookimpl" in code:
            exec(compile(_dedent(code), f"CONTRIBUTING.md [{name}]", "exec"), module.__dict__)
    if name == "register_commands":
        group = click.Group("airo")
        module.register_commands(cli=group)
        assert group.commands, "the register_commands example adds no command"
        return
    with registered_plugin(module, name=module.__name__) as registry:
        provides = registry.plugins[module.__name__].provides
        assert provides and not registry.plugins[module.__name__].error, provides


def test_template_example_agrees_with_itself(sections, airo_env):
    """The prompt template example: render() and its chat_template give the same prompt."""
    jinja2 = pytest.importorskip("jinja2")
    from airo.core import Conversation, Message

    namespace: dict = {}
    for lang, code in sections["register_prompt_templates"].blocks:
        if lang == "python":
            exec(compile(code, "CONTRIBUTING.md", "exec"), namespace)
    template = namespace["AlpacaTemplate"]()
    messages = [Message("system", "Be brief."), Message("user", "hi"), Message("assistant", "hello"),
                Message("user", "2+2?"), Message("assistant", "4")]
    segments = template.render(Conversation(messages), bos_token="<s>", eos_token="</s>")
    prompt = "".join(s.text for s in segments[:-1])
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders chat templates
    rendered = env.from_string(template.chat_template).render(
        messages=[{"role": m.role, "content": m.content} for m in messages[:-1]],
        bos_token="<s>", eos_token="</s>", add_generation_prompt=True)
    assert rendered == prompt


@pytest.mark.parametrize("needle", [
    "AIRO_STRICT_PLUGINS", "AIRO_DISABLE_PLUGINS", "registered_plugin", "airo_plugin", "build_tiny_tokenizer",
    "build_tiny_llama", 'pytest_plugins = ["airo.core.testing"]', "[project.entry-points.airo]",
    "@pytest.mark.slow", "pip install -e", "TrainContext", "is_main_process", "adapter_dir", "working_dir",
    "source_target", "chat_template", "Segment(", "LoadedModel(",
])
def test_contributing_covers(doc, needle):
    assert needle in doc


def ci_test_command() -> str:
    match = re.search(r"^README_TEST_COMMAND='(.+)'$", CI_SCRIPT.read_text(), re.M)
    assert match, ".ci/run must define README_TEST_COMMAND='...' on one line"
    return match.group(1)


def test_ci_runs_the_documented_test_command(doc):
    command = ci_test_command()
    assert command == 'python install.py --test && python -m pytest -q'
    assert command in doc, "CONTRIBUTING.md must show the same test command as .ci/run"
    readme = REPO / "README.md"
    if not readme.exists():
        pytest.skip("README.md not written yet")
    assert command in readme.read_text(encoding="utf-8"), "README.md must show the test command .ci/run runs"


def test_reliability_doc_names_only_tests_that_exist():
    """docs/reliability.md backs each guarantee with a test: every one it names must exist."""
    text = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = re.findall(r"`(test_\w+\.py)::(\w+)`", text)
    assert len(named) >= 20
    for filename, test in named:
        source = (REPO / "tests" / filename).read_text(encoding="utf-8")
        assert re.search(rf"^def {test}\(", source, re.M), f"docs/reliability.md names {filename}::{test}, which does not exist"


def _quick_start_commands() -> list[str]:
    """The shell lines of README's "Quick start" section, install steps and the test command aside."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.strip().splitlines():
            installs = line.startswith(("pip install", "python install.py"))
            line = line.split("&&")[-1].strip() if installs else line.strip()
            if line and not line.startswith(("pip ", "python install.py", "#")) and "pytest" not in line:
                commands.append(line)
    return commands


def test_quick_start_shows_train_then_talk():
    commands = _quick_start_commands()
    assert commands[0] == "airo train examples/demo.yaml"
    assert any(c.startswith("airo chat ") for c in commands) and any(c.startswith("airo generate ") for c in commands)


@pytest.mark.slow
def test_every_quick_start_command_runs(tmp_path, airo_env):
    """Each command README's quick start shows, run as written (in a copy of the examples)."""
    import shlex
    import shutil
    import subprocess
    import sys

    shutil.copytree(REPO / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("airo-plugin-example"))
    for command in _quick_start_commands():
        argv = shlex.split(command)
        assert argv[0] == "airo", command
        stdin = "What is 2 + 2?\n/exit\n" if argv[1] == "chat" else None
        proc = subprocess.run([sys.executable, "-m", "airo.core", *argv[1:]], cwd=tmp_path, input=stdin,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, command
    assert (tmp_path / "runs" / "demo-merged" / "README.md").is_file()


# -- what CONTRIBUTING states about the plugin contract, checked against the code ---------------

def _public_names_table(doc: str) -> str:
    start = doc.index("<!-- public-names:")
    return doc[start:doc.index("\n\n", doc.index("| --- |", start))]


def test_every_public_name_is_documented(doc):
    """The table under "What a plugin needs from the core" lists exactly airo.core.__all__:
    a name made public without a row (or a row naming what is not exported) fails."""
    import airo.core

    listed = set(re.findall(r"`(\w+)`", _public_names_table(doc)))
    listed.discard("airo")
    exported = set(airo.core.__all__)
    assert exported - listed == set(), f"public in airo.core but not in CONTRIBUTING's table: {sorted(exported - listed)}"
    rows = {name for name in listed if not name.startswith("airo")}
    assert rows - exported == set(), f"CONTRIBUTING's table names what airo.core does not export: {sorted(rows - exported)}"


def test_documented_hooks_are_the_hookspecs(sections):
    documented = {title for title in sections if re.fullmatch(r"register_\w+", title)}
    assert documented == set(hookspec_functions())


def test_the_documented_register_calls_are_the_contract(sections):
    """Each hook section's ``register(...)`` line is its protocol in airo.core.contract."""
    from airo.core import contract

    for hook, protocol in contract.REGISTER_PROTOCOLS.items():
        params = list(inspect.signature(protocol.__call__).parameters.values())[1:]
        parts, star = [], False
        for p in params:
            if p.kind is p.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}".replace("'", '"'))
        call = f"register({', '.join(parts)})"
        code = {line.strip() for _, block in sections[hook].blocks for line in block.splitlines()}
        assert call in code, f"CONTRIBUTING's {hook} section must show {call}"


def _blocking_bullet(doc: str) -> str:
    bullet = doc[doc.index("- **`AIRO_DISABLE_PLUGINS=name1,name2`**"):]
    return " ".join(bullet[:bullet.index("\n- ")].split())


def test_blocking_the_core_builtins_is_documented_as_it_behaves(doc, airo_env, monkeypatch):
    """CONTRIBUTING once said `loaders` and `actions` could not be blocked; they can, and a
    run without them fails (or saves nothing) as the docs say."""
    from airo.core import api
    from airo.core.plugins import get_registry, reset_plugin_manager
    from airo.core.training import select_actions, select_loader

    text = _blocking_bullet(doc)
    assert "not blocked" not in text and "cannot be blocked" not in text and "stay loaded" not in text
    assert "`loaders` and `actions` too" in text
    message = re.search(r"stops before anything loads with `([^`]+)`", text).group(1)
    config = api.load_config(argv=["--model_name_or_path", "m", "--output_dir", "o", "--dataset", "d.jsonl"],
                             include_training=False)
    assert [a.name for a in select_actions(config)] == ["save"]
    monkeypatch.setenv("AIRO_DISABLE_PLUGINS", "loaders,actions")
    reset_plugin_manager()
    registry = get_registry()
    assert registry.plugins["loaders"].blocked and registry.plugins["actions"].blocked
    assert not registry.loaders and "save" not in registry.actions
    with pytest.raises(Exception, match=re.escape(message)):
        select_loader(config)
    assert select_actions(config) == []  # no save action: the run writes no model
