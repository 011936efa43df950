"""The `airo` command line: structure, listing commands, and how errors look."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from airo.core import __version__, api
from airo.core.cli import main

KINDS = ("formats", "templates", "loaders", "actions", "patches")
COMMANDS = ("train", "preprocess", "preview", "merge", "plugins", "list")


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``airo ARGS`` in this process, through ``main`` (the console script's entry)."""
    with pytest.raises(SystemExit) as excinfo:
        main(list(args))
    out, err = capsys.readouterr()
    code = excinfo.value.code
    return (0 if code is None else code), out, err


@pytest.fixture(autouse=True)
def _clean_plugins(airo_env, monkeypatch):
    monkeypatch.delenv("AIRO_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("AIRO_DISABLE_PLUGINS", raising=False)


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"airo, version {__version__}"


def test_help_lists_commands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and out.startswith("Usage: airo")
    commands = out.split("Commands:", 1)[1]
    for name in COMMANDS:
        assert f"\n  {name} " in commands, name
    code, short, _ = run(capsys, "-h")
    assert code == 0 and short == out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(capsys, command):
    code, out, err = run(capsys, command, "--help")
    assert code == 0, err
    assert out.startswith(f"Usage: airo {command}")


def test_help_all_lists_every_option(capsys):
    code, out, _ = run(capsys, "train", "--help-all")
    assert code == 0
    for flag in ("--model_name_or_path", "--dataset_format", "--bits", "--output_dir", "--learning_rate",
                 "--per_device_train_batch_size", "--deepspeed"):
        assert f"\n  {flag} (default: " in "\n" + out, flag
    # airo's own options come first, grouped; TrainingArguments' last
    sections = [out.index(title) for title in ("\nmodel:", "\ndata:", "\noutputs and post-training:", "\ntraining (")]
    assert sections == sorted(sections)
    assert out.index("--model_name_or_path") < out.index("--learning_rate")


@pytest.mark.parametrize("kind", KINDS)
def test_list(capsys, kind):
    code, out, err = run(capsys, "list", kind)
    assert code == 0, err
    table = api.registry().kind(kind)
    lines = out.splitlines()
    assert len(lines) == len(table)
    for line, name in zip(lines, sorted(table), strict=True):
        assert line.startswith(name + " ") and line.endswith(f"({table[name].plugin})")

    code, out, err = run(capsys, "list", kind, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [row["name"] for row in rows] == sorted(table)
    for row in rows:
        entry = table[row["name"]]
        assert row["plugin"] == entry.plugin and row["description"] == entry.description
        if kind == "formats":
            assert row["default_template"] == entry.default_template


def test_list_shows_the_example_plugin(capsys):
    _, formats, _ = run(capsys, "list", "formats", "--json")
    _, templates, _ = run(capsys, "list", "templates", "--json")
    assert {"name": "example-qa", "plugin": "example", "default_template": "example-qa",
            "description": '{"question", "answer"} records (example plugin)'} in json.loads(formats)
    assert "example-qa" in [row["name"] for row in json.loads(templates)]


def test_list_unknown_kind_is_a_usage_error(capsys):
    code, _, err = run(capsys, "list", "format")
    assert code == 2 and "Invalid value" in err and "'format'" in err


def test_plugins_command(capsys):
    code, out, err = run(capsys, "plugins")
    assert code == 0, err
    for info in api.plugins():
        assert f"{info.name}  ({info.distribution} {info.version})" in out
    code, out, _ = run(capsys, "plugins", "--json")
    rows = json.loads(out)
    assert {"name", "distribution", "version", "module", "provides", "error", "blocked"} <= set(rows[0])


def test_unknown_flag_is_an_error_without_traceback(capsys):
    code, out, err = run(capsys, "train", "--no_such_flag", "1")
    assert code == 2
    assert err.startswith("error: unknown option '--no_such_flag'")
    assert "Traceback" not in err and out == ""


def test_config_errors(capsys, tmp_path):
    code, _, err = run(capsys, "train", str(tmp_path / "missing.yaml"))
    assert code == 2 and err.startswith("error: config file") and "not found" in err
    code, _, err = run(capsys, "train", "--bits", "3")
    assert code == 2 and err.startswith("error: --bits must be 4, 8, 16 or 32")
    code, _, err = run(capsys, "preview", "--learning_rat", "1")
    assert code == 2 and "Did you mean --learning_rate?" in err


def test_merge_requires_its_options(capsys):
    code, _, err = run(capsys, "merge")
    assert code == 2
    assert "Usage: airo merge" in err and "Missing option '--base'" in err
    code, _, err = run(capsys, "merge", "--base", "b", "--adapter", "does-not-exist", "--out", "o")
    assert code == 2 and "does-not-exist" in err


def test_preprocess_requires_output(capsys):
    code, _, err = run(capsys, "preprocess", "--dataset", "x.jsonl")
    assert code == 2 and "Missing option '--output'" in err


def test_unknown_command(capsys):
    code, _, err = run(capsys, "trian")
    assert code == 2 and "No such command 'trian'" in err


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("AIRO_STRICT_PLUGINS", "AIRO_DISABLE_PLUGINS")}


def test_console_script_and_module(tmp_path):
    """The installed `airo` script and `python -m airo.core` (what torchrun runs) are the same CLI."""
    script = shutil.which("airo", path=str(Path(sys.executable).parent)) or shutil.which("airo")
    assert script, "the `airo` console script is not installed (pip install -e .)"
    version = subprocess.run([script, "--version"], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                             timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"airo, version {__version__}"
    # (test_unknown_flag_is_an_error_without_traceback runs `airo train --no_such_flag 1` in process;
    # test_plugins.py checks `error: ...` without a traceback from real subprocesses.)
    usage = subprocess.run([sys.executable, "-m", "airo.core", "merge"], capture_output=True, text=True,
                           env=_env(), cwd=tmp_path, timeout=120)
    assert usage.returncode == 2 and "Missing option '--base'" in usage.stderr
    assert "Traceback" not in usage.stderr


# -- errors a user can cause: one line, never a traceback (AIRO_DEBUG=1 shows it) -------------

def _raising(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.fixture
def debug_off(monkeypatch):
    for var in ("AIRO_DEBUG", "RANK"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("exc, message", [
    (PermissionError(13, "Permission denied", "/data/out"), "error: airo plugins: /data/out: Permission denied"),
    (OSError(28, "No space left on device"), "error: airo plugins: No space left on device"),
    (OSError(18, "Invalid cross-device link", "/a", None, "/b"), "error: airo plugins: /a -> /b: Invalid cross-device link"),
])
def test_os_error_is_one_line(capsys, monkeypatch, debug_off, exc, message):
    monkeypatch.setattr(api, "plugins", _raising(exc))
    code, out, err = run(capsys, "plugins")
    assert code == 1 and out == "" and err == message + "\n"


def test_unexpected_error_is_an_internal_error(capsys, monkeypatch, debug_off):
    monkeypatch.setattr(api, "plugins", _raising(TypeError("unsupported operand\n  on two lines")))
    code, _, err = run(capsys, "plugins")
    assert code == 1
    assert err == ("error: internal error: TypeError: unsupported operand on two lines "
                   "(set AIRO_DEBUG=1 for the traceback; please report it)\n")


def test_airo_debug_prints_the_traceback(capsys, monkeypatch, debug_off):
    monkeypatch.setenv("AIRO_DEBUG", "1")
    monkeypatch.setattr(api, "plugins", _raising(TypeError("boom")))
    code, _, err = run(capsys, "plugins")
    assert code == 1 and err.startswith("Traceback (most recent call last):")
    assert err.rstrip().splitlines()[-1] == "error: internal error: TypeError: boom (please report it)"
    # airo's own errors too
    code, _, err = run(capsys, "train", "--bits", "3")
    assert code == 2 and "Traceback (most recent call last):" in err and "ConfigError" in err
    assert err.rstrip().splitlines()[-1].startswith("error: --bits must be 4, 8, 16 or 32")


@pytest.mark.parametrize("exc, message", [
    (MemoryError(), "error: out of memory (MemoryError); for training, lower --per_device_train_batch_size"),
    (type("OutOfMemoryError", (RuntimeError,), {"__module__": "torch"})("CUDA out of memory. Tried to allocate"
                                                                         " 2.00 GiB\nmore detail"),
     "error: out of accelerator memory (CUDA out of memory. Tried to allocate 2.00 GiB); for training, lower"),
])
def test_out_of_memory_is_a_message(capsys, monkeypatch, debug_off, exc, message):
    monkeypatch.setattr(api, "plugins", _raising(exc))
    code, _, err = run(capsys, "plugins")
    assert code == 1 and err.startswith(message) and "Traceback" not in err and "report" not in err


def test_keyboard_interrupt(capsys, monkeypatch, debug_off):
    monkeypatch.setattr(api, "plugins", _raising(KeyboardInterrupt()))  # inside a command: click's Abort
    code, _, err = run(capsys, "plugins")
    assert code == 130 and err.strip() == "interrupted"
    import airo.core.cli as cli_module

    monkeypatch.setattr(cli_module, "_add_plugin_commands", _raising(KeyboardInterrupt()))  # before any command
    code, _, err = run(capsys, "plugins")
    assert code == 130 and err.strip() == "interrupted"


def test_worker_ranks_name_themselves(capsys, monkeypatch, debug_off):
    monkeypatch.setattr(api, "plugins", _raising(OSError(28, "No space left on device")))
    monkeypatch.setenv("RANK", "3")
    _, _, err = run(capsys, "plugins")
    assert err == "[rank 3] error: airo plugins: No space left on device\n"
    monkeypatch.setenv("RANK", "0")
    _, _, err = run(capsys, "plugins")
    assert err == "error: airo plugins: No space left on device\n"


def test_plugin_failure_at_run_time_names_the_plugin(capsys, airo_plugin, debug_off, tmp_path, tiny_model_dir):
    from airo.core import hookimpl

    class Broken:
        @hookimpl
        def register_post_train_actions(self, register):
            register("t-broken", lambda ctx: None, auto=lambda config: config.no_such_field)

    airo_plugin(Broken(), name="broken-auto")
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "output": "yo"}\n')
    code, _, err = run(capsys, "train", "--model_name_or_path", tiny_model_dir, "--dataset", str(data),
                       "--dataset_format", "alpaca", "--output_dir", str(tmp_path / "out"))
    assert code == 1 and "Traceback" not in err
    assert err.startswith("error: plugin 'broken-auto' (distribution <registered in code>): "
                          "post-training action 't-broken' auto() failed: AttributeError: ")
    assert err.rstrip().endswith("(set AIRO_DEBUG=1 for the traceback)")


def test_help_all_shows_the_defaults_airo_derives(capsys):
    """--help-all said eval_strategy defaults to 'no' while a run with an eval split evaluates:
    each derived default is shown as what airo does, and is what the run's arguments get."""
    from airo.core.config import build_config
    from airo.core.options import DERIVED_DEFAULTS
    from airo.core.training.arguments import training_overrides

    code, out, _ = run(capsys, "train", "--help-all")
    assert code == 0
    assert "\n  --eval_strategy (default: --save_strategy's steps or epoch when there is an eval split" in out
    for name, derived in DERIVED_DEFAULTS.items():
        assert f"\n  --{name} (default: {derived})" in out, name

    base = ["--model_name_or_path", "m", "--dataset", "d.jsonl", "--output_dir", "o"]
    cases = {
        "eval_strategy": (base, "steps"),
        "eval_steps": (base + ["--save_steps", "7"], 7),
        "activation_checkpointing": (base + ["--gradient_checkpointing"], True),
        "train_sampling_strategy": (base + ["--group_by_length"], "group_by_length"),
    }
    for name, (argv, expected) in cases.items():
        assert training_overrides(build_config(None, argv)).get(name) == expected, name
    no_eval = training_overrides(build_config(None, base + ["--eval_dataset_size", "0"]))
    assert no_eval.get("eval_strategy", "no") == "no"
    assert set(cases) | {"use_cpu"} == set(DERIVED_DEFAULTS)


def test_merge_spells_its_method_as_train_does(capsys, monkeypatch):
    """`airo merge --merge_method` as `airo train --merge_method`; the old --method still works,
    with a warning, and is not shown in the help."""
    import airo.plugins.merge as merge_plugin

    calls = []

    class Done:
        def summary(self):
            return "merged"

    monkeypatch.setattr(merge_plugin, "merge_adapter", lambda **kw: calls.append(kw) or Done())
    code, out, _ = run(capsys, "merge", "--help")
    assert code == 0 and "--merge_method" in out and "--method " not in out
    for flag, warned in (("--merge_method", False), ("--merge-method", False), ("--method", True)):
        code, out, err = run(capsys, "merge", "--base", "b", "--adapter", ".", "--out", "o", flag, "direct")
        assert code == 0 and out.strip() == "merged", err
        assert calls[-1]["method"] == "direct"
        assert ("--method is now --merge_method" in err) is warned
