"""Untrusted input stays bounded: YAML configs, chat templates from plugins and tokenizers,
plugins that print or shadow options or raise in the training loop, and the memory of reading
a big dataset.

The attacks are generated: alias bombs and nestings of every depth and breadth (hypothesis),
a matrix of template attacks (loops, huge values, the sandbox's internals, recursion) x every
place a chat template is rendered, option collisions x every kind of name a plugin may
shadow. Each case asserts the exit code or error type, a one-line message naming the source,
and a bounded time.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airo.core import hookimpl
from airo.core.cli import main
from airo.core.errors import ConfigError
from airo.core.plugins import PluginCallError, PluginWarning, get_plugin_manager
from airo.core.template_sandbox import ChatTemplateError, ChatTemplateLimit, render_chat_template
from airo.core.yaml_config import MAX_DEPTH, MAX_VALUES, load_yaml
from conftest import EXAMPLES
from test_plugins import airo, fake_dist

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as excinfo:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = excinfo.value.code
    return (0 if code is None else code), out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text and "internal error" not in text, text
    return lines[0]


# -- YAML: bounded while composing -----------------------------------------------------------

def alias_bomb(depth: int, breadth: int) -> str:
    """``a0: &a0 [x, x, ...]``, then each level a list of ``breadth`` aliases of the one before."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * breadth)}]"]
    for level in range(1, depth + 1):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * breadth)}]")
    return "\n".join(lines) + "\n"


def expanded(depth: int, breadth: int) -> int:
    """Values the bomb stands for: every level's list and items, aliases expanded."""
    total, size = 0, breadth + 1  # a0: the list and its scalars
    total += size + 1  # + its key
    for _ in range(depth):
        size = 1 + breadth * size
        total += size + 1
    return total + 1  # the top mapping


@FAST
@given(depth=st.integers(1, 9), breadth=st.integers(2, 12))
def test_alias_bombs_are_refused_while_composing_and_small_aliases_load(depth, breadth, tmp_path_factory):
    folder = tmp_path_factory.mktemp("yaml")
    path = folder / "bomb.yaml"
    path.write_text(alias_bomb(depth, breadth))
    before = snapshot(folder)
    start = time.perf_counter()
    if expanded(depth, breadth) <= MAX_VALUES:
        data = load_yaml(path)
        assert len(data[f"a{depth}"]) == breadth
    else:
        with pytest.raises(ConfigError) as info:
            load_yaml(path)
        message = one_line(str(info.value))
        assert message.startswith(f"{path}, line ") and f"more than {MAX_VALUES:,} values" in message
        line = int(message.split(", line ")[1].split(":")[0])
        assert 1 <= line <= depth + 1
    assert time.perf_counter() - start < 2
    assert snapshot(folder) == before


@FAST
@given(depth=st.integers(1, 3 * MAX_DEPTH), shape=st.sampled_from(["list", "flow-map", "block-map"]))
def test_nesting_is_bounded(depth, shape, tmp_path_factory):
    path = tmp_path_factory.mktemp("yaml") / "deep.yaml"
    if shape == "list":
        text = "lora_target: " + "[" * depth + "]" * depth + "\n"
    elif shape == "flow-map":
        text = "lora_target: " + "{a: " * depth + "1" + "}" * depth + "\n"
    else:
        text = "lora_target:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(depth - 1)) + \
            "  " * depth + "leaf: 1\n"
    path.write_text(text)
    # levels: the top mapping, the nested collections, and a map's scalar leaf
    levels = depth + 1 if shape == "list" else depth + 2
    start = time.perf_counter()
    if levels <= MAX_DEPTH:
        assert "lora_target" in load_yaml(path)
    else:
        with pytest.raises(ConfigError) as info:
            load_yaml(path)
        message = one_line(str(info.value))
        assert message.startswith(f"{path}, line ") and f"nested more than {MAX_DEPTH} levels deep" in message
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("case", ["recursive-anchor", "huge-file", "aliases-of-a-mapping"])
def test_other_yaml_attacks_are_one_line_errors_from_the_cli(case, capsys, tmp_path):
    config = tmp_path / "config.yaml"
    if case == "recursive-anchor":
        config.write_text("model_name_or_path: m\nlora_target: &a [x, *a]\n")
        expected = "line 2: the YAML has an alias inside its own anchor"
    elif case == "huge-file":
        config.write_text("dataset: d\n# " + "x" * (5 << 20) + "\n")
        expected = "MiB is too big for a config"
    else:  # lists of aliases of a mapping
        lines = ["b0: &b0 {k0: 1, k1: 2, k2: 3, k3: 4, k4: 5, k5: 6, k6: 7, k7: 8, k8: 9, k9: 10}"]
        for level in range(1, 7):
            lines.append(f"b{level}: &b{level} [" + ", ".join([f"*b{level - 1}"] * 10) + "]")
        config.write_text("\n".join(lines) + "\n")
        expected = f"more than {MAX_VALUES:,} values"
    before = snapshot(tmp_path)
    start = time.perf_counter()
    code, out, err = run_cli(capsys, "preprocess", config, "--output", tmp_path / "out")
    assert time.perf_counter() - start < 5
    assert code == 2 and out == ""
    message = one_line(err)
    assert message.startswith(f"error: {config}") and expected in message, message
    assert snapshot(tmp_path) == before


def test_a_normal_config_with_anchors_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("defaults: &d {lora_r: 8, lora_alpha: 16}\nqlora:\n  <<: *d\n  lora_dropout: 0.1\n"
                    "model:\n  model_name_or_path: m\n")
    data = load_yaml(path)
    assert data["lora_r"] == 8 and data["lora_dropout"] == 0.1 and data["model_name_or_path"] == "m"


# -- chat templates: one bounded renderer ----------------------------------------------------

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}]

# kind -> name -> template. "loop" and "recursion" stop on the deadline or the recursion
# check; "huge" before the value is built; "internals" are refused by the sandbox or render
# nothing of Python's insides.
ATTACKS = {
    "loop": {
        "nested-range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "nested-range-output": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "loop-over-messages-text": "{% for m in messages %}{% for c in m.content * 2000000 %}{% for d in "
                                   "range(100000) %}{% endfor %}{% endfor %}{% endfor %}",
        "set-block": "{% set s %}{% for i in range(100000) %}{% for j in range(1000) %}{{ i }}{% endfor %}"
                     "{% endfor %}{% endset %}{{ s }}",
    },
    "huge": {
        "repeat": "{{ 'x' * 1000000000 }}",
        "repeat-computed": "{{ 'x' * 10 ** 9 }}",
        "power": "{{ 10 ** (10 ** 8) }}",
        "center": "{{ 'x' | center(1000000000) }}",
        "ljust": "{{ 'x'.ljust(10 ** 9) }}",
        "format-width": "{{ '{:>1000000000}'.format(1) }}",
        "percent-width": "{{ '%1000000000d' % 1 }}",
        "replace": "{{ ('x' * 1000000) | replace('x', 'y' * 1000) }}",
        "join": "{{ ('y' * 100000).join(range(100000)) }}",
        "join-filter": "{{ range(100000) | join('y' * 100000) }}",
        "indent": "{{ ('a\\n' * 1000000) | indent(1000) }}",
        "doubling-concat": "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(64) %}"
                           "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        "doubling-plus": "{% set ns = namespace(s=['x']) %}{% for i in range(64) %}"
                         "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
        "many-big-values": "{% set ns = namespace(l=[]) %}{% for i in range(1000) %}"
                           "{% set ns.l = ns.l + ['x' * 3000000 ~ i] %}{% endfor %}{{ ns.l | length }}",
        "lipsum": "{{ lipsum(100000, max=1000) }}",
        "tojson-indent": "{{ range(1000) | list | tojson(indent=1000000) }}",
    },
    "internals": {
        "mro": "{{ ''.__class__.__mro__ }}",
        "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "globals": "{{ raise_exception.__globals__['os'] }}",
        "namespace-dunder": "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
        "list-append": "{% set l = [] %}{{ l.append(1) }}",
        "format-field": "{{ '{0.__class__.__base__.__subclasses__}'.format(1) }}",
        "include": "{% include '/etc/passwd' %}",
        "import": "{% import 'os' as os %}{{ os }}",
    },
    "recursion": {
        "macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "macro-fan-out": "{% macro f(n) %}{% if n < 60 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}{% endmacro %}"
                         "{{ f(0) }}",
        "recursive-loop": "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
        "caller": "{% macro f() %}{% call f() %}x{% endcall %}{{ caller() }}{% endmacro %}{% call f() %}{% endcall %}",
    },
}
CASES = [(kind, name, text) for kind, table in ATTACKS.items() for name, text in table.items()]
LIMIT = 0.5  # seconds; the default is TIME_LIMIT


def _render_through(place: str, chat_template: str, tokenizer):
    """Render as each place airo renders a chat template does."""
    from airo.core.chat_parity import inference_prompt_ids
    from airo.plugins.inference import render_prompt

    if place == "renderer":
        return render_chat_template(chat_template, MESSAGES, source="the prompt template 't-evil' of plugin 't-p'",
                                    add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    if place == "parity":
        return inference_prompt_ids(tokenizer, chat_template, MESSAGES,
                                    source="the prompt template 't-evil' of plugin 't-p'")
    import copy

    evil = copy.deepcopy(tokenizer)
    evil.chat_template = chat_template
    return render_prompt(evil, MESSAGES)  # airo chat / airo generate


@pytest.mark.parametrize("place", ["renderer", "parity", "inference"])
@pytest.mark.parametrize("kind,name,text", CASES, ids=[f"{k}-{n}" for k, n, _ in CASES])
def test_template_attacks_stop_quickly_with_one_line_naming_the_template(kind, name, text, place, tiny_tokenizer,
                                                                         monkeypatch):
    from airo.core import template_sandbox

    monkeypatch.setattr(template_sandbox, "TIME_LIMIT", LIMIT)
    start = time.perf_counter()
    try:
        out = _render_through(place, text, tiny_tokenizer)
    except ChatTemplateError as exc:
        message = one_line(str(exc))
        source = "the tokenizer of " if place == "inference" else "the prompt template 't-evil' of plugin 't-p'"
        assert message.startswith(source), message
        if kind in ("loop", "recursion", "huge"):
            assert isinstance(exc, ChatTemplateLimit), message
            assert "was stopped" in message, message
        else:
            assert isinstance(exc, ChatTemplateLimit) or "no loader" in message, message
    else:
        assert kind == "internals", f"{name} rendered {str(out)[:200]!r}"
        text_out = out if isinstance(out, str) else tiny_tokenizer.decode(out)
        assert not any(word in text_out for word in ("class", "function", "module", "built-in")), text_out
    assert time.perf_counter() - start < LIMIT + 3


def test_the_default_deadline_stops_a_loop_within_seconds():
    start = time.perf_counter()
    with pytest.raises(ChatTemplateLimit, match=r"^the tokenizer of m: the chat_template was stopped: it ran for more "
                                                r"than 3 s"):
        render_chat_template(ATTACKS["loop"]["nested-range"], MESSAGES, source="the tokenizer of m")
    assert time.perf_counter() - start < 6


def test_a_looping_plugin_template_stops_the_parity_check_once_not_per_conversation(airo_env, airo_plugin,
                                                                                    tiny_tokenizer, monkeypatch):
    from airo.core import template_sandbox
    from airo.core.chat_parity import check_chat_template
    from airo.core.config import build_config
    from airo.core.data.plan import resolve_plan
    from airo.core.types import Conversation, Message
    from airo.plugins.templates import CHATML

    monkeypatch.setattr(template_sandbox, "TIME_LIMIT", LIMIT)

    class Evil:
        name, description = "t-evil", "loops in its chat_template"
        chat_template = ATTACKS["loop"]["nested-range"]

        def render(self, conversation, *, bos_token, eos_token):
            return CHATML.render(conversation, bos_token=bos_token, eos_token=eos_token)

    evil = Evil()

    class Plugin:
        @hookimpl
        def register_prompt_templates(self, register):
            register("t-evil", evil)

    airo_plugin(Plugin(), name="t-evil-plugin")
    config = build_config(None, ["--output_dir", "o", "--prompt_template", "t-evil"])
    conversations = [Conversation([Message("user", f"q{i}"), Message("assistant", f"a{i}")]) for i in range(10)]
    start = time.perf_counter()
    result = check_chat_template(tiny_tokenizer, evil, conversations, resolve_plan(config), config)
    assert time.perf_counter() - start < 3 * LIMIT + 2
    assert result.matched == 0 and result.total == 10
    assert "the prompt template 't-evil' of plugin 't-evil-plugin': the chat_template was stopped" in \
        result.first_mismatch


def _all_templates():
    from airo.core.plugins import get_registry

    return [(name, variant, text) for name, entry in sorted(get_registry().templates.items())
            for variant, text in (entry.template.chat_template_variants().items()
                                  if hasattr(entry.template, "chat_template_variants")
                                  else {"default": entry.template.chat_template}.items())]


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(system=st.none() | TEXT, turns=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=3), data=st.data())
def test_the_bounded_renderer_renders_what_transformers_renders(system, turns, data, tiny_tokenizer):
    """Every registered template, every rendering, generated conversations: the same text as
    ``apply_chat_template`` (what an inference engine renders), or the same failure."""
    name, variant, chat_template = data.draw(st.sampled_from(_all_templates()))
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    for user, reply in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    messages = messages[:-1]
    try:
        theirs = tiny_tokenizer.apply_chat_template(messages, chat_template=chat_template, add_generation_prompt=True,
                                                    tokenize=False)
    except Exception:  # noqa: BLE001 - e.g. a role check: the bounded renderer fails too
        with pytest.raises(ChatTemplateError):
            render_chat_template(chat_template, messages, source=name, add_generation_prompt=True,
                                 **tiny_tokenizer.special_tokens_map)
        return
    ours = render_chat_template(chat_template, messages, source=name, add_generation_prompt=True,
                                **tiny_tokenizer.special_tokens_map)
    assert ours == theirs, (name, variant)


# -- plugins that print: stdout carries only the JSON ----------------------------------------

NOISY = """
    import os
    import sys

    print("noisy: imported")
    os.write(1, b"noisy: raw write at import\\n")
    from airo.core import hookimpl

    @hookimpl
    def register_dataset_formats(register):
        print("noisy: in a hook")
        sys.stdout.write("noisy: sys.stdout.write\\n")

        def convert(record):
            print("noisy: converting")
            from airo.core import Conversation, Message
            return Conversation([Message("user", record["q"]), Message("assistant", record["a"])])

        register("noisy-format", convert, default_template="chatml", description="prints")

    @hookimpl
    def register_commands(cli):
        print("noisy: adding commands")
"""


@pytest.fixture(scope="module")
def noisy_site(tmp_path_factory):
    return fake_dist(tmp_path_factory.mktemp("noisy") / "site", "noisy-dist", "noisy", "noisy_mod", NOISY,
                     version="0.3")


@pytest.mark.parametrize("args", [("plugins", "--json"), ("list", "--json"), ("list", "formats", "--json")],
                         ids=["plugins", "list", "list-formats"])
def test_a_plugin_that_prints_cannot_corrupt_json(args, noisy_site, tmp_path):
    result = airo(*args, site=noisy_site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # the whole of stdout is the JSON
    assert "noisy" in result.stdout
    assert "noisy: imported" not in result.stdout and "noisy: imported" in result.stderr
    assert "noisy: raw write at import" in result.stderr and "noisy: in a hook" in result.stderr
    if args[0] == "plugins":
        assert {i["name"]: i for i in data}["noisy"]["provides"] == {"formats": ["noisy-format"]}


@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_preview_json_stays_json_when_a_converter_prints(noisy_site, tiny_tokenizer_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"q": f"question {i}", "a": f"answer {i}"}) + "\n" for i in range(4)))
    result = airo("preview", "--json", "-n", "2", "--model_name_or_path", tiny_tokenizer_dir, "--dataset", str(data),
                  "--dataset_format", "noisy-format", "--eval_dataset_size", "0", site=noisy_site, cwd=tmp_path,
                  AIRO_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    examples = json.loads(result.stdout)
    assert len(examples) == 2 and "noisy: converting" in result.stderr


# -- plugin options that shadow a flag -------------------------------------------------------

TRAINING_NAMES = ("learning_rate", "weight_decay", "logging_steps", "save_total_limit", "adam_beta2",
                  "lr_scheduler_type")


def _collisions():
    """(name, kind, owner text) for a sample of every kind of name a plugin may not take."""
    from airo.core.flags import _own_flags
    from airo.core.options import ALIASES, OBSOLETE

    own = sorted(_own_flags())
    cases = [(name, "airo", "airo's own option (section ") for name in own[:: max(1, len(own) // 6)]]
    cases += [(name, "training", "a transformers.TrainingArguments option") for name in TRAINING_NAMES]
    cases += [(name, "alias", f"a spelling airo reads as --{target}") for name, target in ALIASES.items()]
    cases += [(name, "obsolete", "an obsolete seed flag") for name in sorted(OBSOLETE)[:2]]
    cases += [("lora_r", "builtin", "the built-in plugin 'loaders' has (section 'qlora')"),
              ("merged_output_dir", "builtin", "the built-in plugin 'merge' has (section 'merge')"),
              ("t_shared_option", "plugin", "plugin 't-other' (distribution <registered in code>) (section "
                                            "'t-other-section') registers too")]
    return cases


COLLISIONS = _collisions()


def _options_plugin(section: str, names: list[str]):
    fields = [(n, int, field(default=1, metadata={"help": n})) for n in names]
    options = make_dataclass(f"Options_{section.replace('-', '_')}", fields)

    class Plugin:
        @hookimpl
        def register_options(self, register):
            register(section, options)

    return Plugin()


@pytest.mark.parametrize("name,kind,owner", COLLISIONS, ids=[f"{k}-{n}" for n, k, _ in COLLISIONS])
def test_an_option_that_shadows_a_flag_refuses_that_plugins_section_alone(name, kind, owner, airo_env, airo_plugin,
                                                                          monkeypatch):
    from airo.core.config import build_config

    from airo.core.flags import _own_flags, training_flags

    monkeypatch.delenv("AIRO_STRICT_PLUGINS", raising=False)
    if kind == "training":
        assert name in training_flags() and name not in _own_flags()
    if kind == "plugin":
        airo_plugin(_options_plugin("t-other-section", [name]), name="t-other")
    airo_plugin(_options_plugin("t-clash-section", ["t_own_option", name]), name="t-clash")
    airo_plugin(_options_plugin("t-bystander", ["t_bystander_option"]), name="t-bystander")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = build_config(None, ["--output_dir", "o", "--t_bystander_option", "5"])
    registry = get_plugin_manager().registry()
    about = [str(w.message) for w in caught
             if issubclass(w.category, PluginWarning) and str(w.message).startswith("plugin 't-clash'")]
    assert len(about) == 1, [str(w.message) for w in caught]
    message = one_line(about[0])
    assert message.startswith(f"plugin 't-clash' (distribution <registered in code>) registers the option --{name} "
                              "(options section 't-clash-section'), which "), message
    assert owner in message and "its options section 't-clash-section' is not used" in message, message
    assert "t-clash-section" not in registry.options and "t-bystander" in registry.options
    assert config.get("t_bystander_option") == 5  # the other plugins and the config work
    with pytest.raises(ConfigError, match="t_own_option"):  # the refused section's options are not flags
        build_config(None, ["--output_dir", "o", "--t_own_option", "2"])
    if kind == "plugin":  # neither of two third-party plugins wins
        assert "t-other-section" not in registry.options
    monkeypatch.setenv("AIRO_STRICT_PLUGINS", "1")
    get_plugin_manager()._registry = None
    with pytest.raises(Exception, match=f"--{name}"):  # strict: the same problem is an error
        build_config(None, ["--output_dir", "o"])


def test_a_section_named_like_a_core_section_is_refused(airo_env, airo_plugin, monkeypatch):
    from airo.core.config import build_config

    monkeypatch.delenv("AIRO_STRICT_PLUGINS", raising=False)
    airo_plugin(_options_plugin("data", ["t_data_thing"]), name="t-data")
    with pytest.warns(PluginWarning, match=r"plugin 't-data' .* names its options section 'data', which is airo's "
                                           r"section 'data'"):
        build_config(None, ["--output_dir", "o"])
    assert "data" not in get_plugin_manager().registry().options


CLASHING_INSTALLED = """
    from dataclasses import dataclass, field
    from airo.core import hookimpl

    @dataclass
    class Opts:
        learning_rate: float = field(default=1.0, metadata={"help": "mine"})

    @hookimpl
    def register_options(register):
        register("t-lr", Opts)
"""


@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_an_installed_plugin_shadowing_a_core_flag_leaves_every_command_working(tmp_path):
    site = fake_dist(tmp_path / "site", "lr-dist", "lrplug", "lrplug_mod", CLASHING_INSTALLED, version="2.0")
    result = airo("train", "--help-all", site=site, cwd=tmp_path, AIRO_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "lrplug" in line]
    assert warning == ["warning: plugin 'lrplug' (distribution lr-dist 2.0) registers the option --learning_rate "
                       "(options section 't-lr'), which is a transformers.TrainingArguments option (section "
                       "'training'); its options section 't-lr' is not used, the rest of airo goes on: rename the "
                       "option (AIRO_DISABLE_PLUGINS=lrplug silences this)"], result.stderr
    assert "--learning_rate (default: 0.0002)" in result.stdout and "t-lr" not in result.stdout


# -- callbacks and evaluations that raise ----------------------------------------------------

EVENTS = ["on_train_begin", "on_step_begin", "on_step_end", "on_log", "on_evaluate", "on_save", "on_train_end"]


@pytest.mark.parametrize("event", EVENTS)
def test_a_raising_callback_names_plugin_callback_and_event(event, airo_env, airo_plugin, tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    from test_evaluation import _trainer
    from airo.core.training.evaluation import install

    def fail(self, args, state, control, **kwargs):
        raise RuntimeError(f"broken in {event}")

    Broken = type("Broken", (TrainerCallback,), {event: fail})

    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            register("t-broken", lambda ctx: Broken())

    airo_plugin(Plugin(), name="t-callbacks")
    trainer = _trainer(tiny_model_dir, tmp_path)
    callback = install(trainer, None, None, str(tmp_path)).callbacks[0]
    assert callback in trainer.callback_handler.callbacks
    extra = {"on_log": {"logs": {}}, "on_evaluate": {"metrics": {}}}.get(event, {})
    with pytest.raises(PluginCallError) as info:  # what the Trainer's CallbackHandler calls for the event
        getattr(callback, event)(trainer.args, trainer.state, trainer.control, model=trainer.model, **extra)
    assert one_line(str(info.value)) == (f"plugin 't-callbacks' (distribution <registered in code>): trainer callback "
                                         f"'t-broken' {event}() failed: RuntimeError: broken in {event}")


RAISING_CALLBACK = """
    from transformers import TrainerCallback
    from airo.core import hookimpl

    class Explodes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise ValueError("exploded at step %d" % state.global_step)

    @hookimpl
    def register_callbacks(register):
        register("exploder", lambda ctx: Explodes())
"""


@pytest.mark.slow
def test_a_raising_callback_during_airo_train_is_one_line_and_exit_1(tiny_model_dir, tmp_path):
    site = fake_dist(tmp_path / "site", "boom-dist", "boom", "boom_mod", RAISING_CALLBACK, version="1.2")
    result = airo("train", "--model_name_or_path", tiny_model_dir, "--dataset",
                  str(EXAMPLES / "data" / "conversations.json"), "--dataset_format", "airoboros_chat",
                  "--model_max_len", "256", "--bits", "32", "--lora_r", "4", "--max_steps", "2",
                  "--eval_dataset_size", "0", "--report_to", "none", "--output_dir", str(tmp_path / "out"),
                  "--working_dir", str(tmp_path / "work"), site=site, cwd=tmp_path, AIRO_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 1, result.stderr[-2000:]
    # the progress bar leaves no newline before the error: the error is the rest of that line
    errors = [line[line.index("error:"):] for line in result.stderr.splitlines() if "error:" in line]
    assert errors == ["error: plugin 'boom' (distribution boom-dist 1.2): trainer callback 'exploder' on_step_end() "
                      "failed: ValueError: exploded at step 1 (set AIRO_DEBUG=1 for the traceback)"], result.stderr
    assert "Traceback" not in result.stderr


# -- reading data: memory in proportion to the largest record --------------------------------

@pytest.mark.slow
def test_a_300_mb_jsonl_is_preprocessed_in_under_1_gb(tiny_tokenizer_dir, tmp_path):
    """``airo preprocess`` of 300 MB of JSON Lines (about 1.9 million small records), every
    record read, tokenized and written: peak RSS (VmHWM of the child process) under 1 GB."""
    from test_data_memory import preprocess, write_records

    data = tmp_path / "big.jsonl"
    n = write_records(data, 300, array=False)
    assert data.stat().st_size >= 300e6
    peak, report = preprocess(tiny_tokenizer_dir, data, tmp_path / "out")
    assert report["records_read"] == n
    assert peak < 1024, f"peak RSS {peak:.0f} MB preprocessing {n} records"
