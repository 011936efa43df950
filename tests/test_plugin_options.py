"""register_options: plugins own their options (flags, YAML keys, validation, resume), as the
built-ins do (the seed's --bits, --lora_r, --merged_output_dir are plugin options)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import EXAMPLES

CONVERSATIONS = EXAMPLES / "data" / "conversations.json"


@dataclass
class UploadOptions:
    upload_repo: str | None = field(default=None, metadata={"help": "Where to upload the adapter."})
    upload_retries: int = field(default=3, metadata={"help": "How often to retry.", "resumable": True})
    upload_temperature: float = field(default=0.5, metadata={"help": "A number the numbers depend on."})

    def __post_init__(self):
        if self.upload_retries < 0:
            raise ValueError(f"--upload_retries must be 0 or more, got {self.upload_retries}")

    def validate(self, config) -> None:
        if self.upload_repo and not config.run.output_dir:
            raise ValueError("--upload_repo needs --output_dir")


class UploadPlugin:
    from airo.core import hookimpl

    @hookimpl
    def register_options(self, register):
        register("upload", UploadOptions, description="uploading the adapter")


def _config(*argv, config_file=None):
    from airo.core.config import build_config

    return build_config(config_file, list(map(str, argv)))


def test_plugin_options_are_flags_and_yaml_keys(airo_env, airo_plugin, tmp_path):
    from airo.core.errors import ConfigError

    airo_plugin(UploadPlugin(), name="upload-plugin")
    config = _config("--output_dir", "o", "--upload_repo", "me/model", "--upload-retries", "5")
    assert config.get("upload_repo") == "me/model" and config.get("upload_retries") == 5
    assert config.section("upload") == UploadOptions("me/model", 5, 0.5)
    assert {"upload_repo", "upload_retries"} <= config.explicit
    assert config.to_dict()["upload_repo"] == "me/model"  # stored with checkpoints: part of the run's identity
    flat = tmp_path / "flat.yaml"
    flat.write_text("output_dir: o\nupload_repo: me/flat\n")
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text("output_dir: o\nupload:\n  upload_repo: me/grouped\n  upload_retries: 1\n")
    assert _config(config_file=flat).get("upload_repo") == "me/flat"
    assert _config(config_file=grouped).section("upload").upload_retries == 1
    assert _config("--upload_retries", "2", config_file=grouped).get("upload_retries") == 2  # flags win
    # converted and validated like airo's own options, errors naming the option and the YAML line
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: o\nupload:\n  upload_retries: [1]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line 3: upload_retries: expected an integer"):
        _config(config_file=bad)
    with pytest.raises(ConfigError, match=r"^--upload_retries must be 0 or more, got -1$"):
        _config("--output_dir", "o", "--upload_retries", "-1")
    negative = tmp_path / "negative.yaml"
    negative.write_text("output_dir: o\nupload:\n  upload_retries: -1\n")
    with pytest.raises(ConfigError, match=r"negative.yaml, line 3: --upload_retries must be 0 or more"):
        _config(config_file=negative)
    with pytest.raises(ConfigError, match="--upload_repo needs --output_dir"):
        _config("--upload_repo", "x")
    with pytest.raises(ConfigError, match=r"upload_temperature.*nan"):
        _config("--output_dir", "o", "--upload_temperature", "nan")
    with pytest.raises(ConfigError, match="no options section 'uplod'. Did you mean 'upload'?"):
        config.section("uplod")
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text("uplaod:\n  upload_repo: x\n")
    with pytest.raises(ConfigError, match=r"misspelt.yaml, line 1: unknown section 'uplaod'. Did you mean 'upload'"):
        _config(config_file=misspelt)


def test_an_option_another_plugin_has_refuses_that_section_alone(airo_env, airo_plugin):
    """The built-in keeps --lora_r; the clashing section is dropped with a warning naming both,
    and every command goes on (tests/test_untrusted_input.py generates the other collisions)."""
    from airo.core import hookimpl
    from airo.core.plugins import PluginWarning

    @dataclass
    class Clash:
        lora_r: int = field(default=1, metadata={"help": "mine"})

    class ClashPlugin:
        @hookimpl
        def register_options(self, register):
            register("clash", Clash)

    registry = airo_plugin(ClashPlugin(), name="clash-plugin")
    with pytest.warns(PluginWarning, match=r"^plugin 'clash-plugin' \(distribution <registered in code>\) registers "
                                           r"the option --lora_r \(options section 'clash'\), which the built-in plugin "
                                           r"'loaders' has \(section 'qlora'\)"):
        config = _config("--output_dir", "o", "--lora_r", "8")
    assert config.get("lora_r") == 8 and config.section("qlora").lora_r == 8
    assert "clash" not in registry.options


def test_plugin_options_take_part_in_the_resume_check(airo_env, airo_plugin, tmp_path):
    from airo.core.errors import ConfigError
    from airo.core.training import CHECKPOINT_MARKER, check_resume_options
    from airo.core.training.checkpoints import options_snapshot

    airo_plugin(UploadPlugin(), name="upload-plugin")
    base = ["--model_name_or_path", "m", "--output_dir", "o", "--upload_repo", "me/a"]
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / CHECKPOINT_MARKER).write_text(json.dumps({"global_step": 2,
                                                            "config": options_snapshot(_config(*base))}))
    check_resume_options(checkpoint, _config(*base, "--upload_retries", "9"))  # marked resumable
    with pytest.raises(ConfigError, match=r"upload_temperature \(0.5 -> 0.7\)"):
        check_resume_options(checkpoint, _config(*base, "--upload_temperature", "0.7"))


def test_builtin_options_belong_to_their_plugins(airo_env):
    from airo.core.flags import all_flags

    flags = all_flags()
    owners = {name: (flags[name].plugin, flags[name].section) for name in
              ("bits", "lora_r", "full_finetune", "merged_output_dir", "merge_method", "max_shard_size",
               "llama1_tokenizer_patch")}
    assert owners == {"bits": ("loaders", "qlora"), "lora_r": ("loaders", "qlora"), "full_finetune": ("loaders", "full"),
                      "merged_output_dir": ("merge", "merge"), "merge_method": ("merge", "merge"),
                      "max_shard_size": ("actions", "save"), "llama1_tokenizer_patch": ("llama1_patch", "llama1")}
    assert flags["model_name_or_path"].plugin == "" and flags["learning_rate"].section == "training"


def test_the_core_imports_neither_peft_nor_bitsandbytes_nor_names_a_builtin():
    """The core's code names no built-in plugin nor reads their options (help texts may cite
    the seed's flags as examples)."""
    import re

    core = Path(__file__).resolve().parent.parent / "core"
    uses = re.compile(r"""["'](qlora|full|merge|save|llama1)["']|\.(bits|lora_\w+|full_finetune|merged_output_dir|"""
                      r"""merge_method|quant_type|double_quant|max_shard_size|llama1_tokenizer_patch)\b|"""
                      r"""get\(["'](bits|lora_\w+|full_finetune|merged_output_dir|merge_method|max_shard_size)["']""")
    for path in core.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for banned in ("import peft", "from peft", "import bitsandbytes", "from bitsandbytes", "airo.plugins"):
            assert banned not in text, f"{path.relative_to(core.parent)} has {banned!r}"
        found = [m.group(0) for m in uses.finditer(text)]
        assert not found, f"{path.relative_to(core.parent)} names built-ins: {found}"


# -- a third-party plugin, installed for real ---------------------------------------------------

THIRD_PARTY = '''
from dataclasses import dataclass, field
import json
from pathlib import Path

import click
from airo.core import hookimpl


@dataclass
class NotifyOptions:
    notify_file: str | None = field(default=None, metadata={"help": "Write a note here after training."})
    notify_greeting: str = field(default="hello", metadata={"help": "What the note says.", "resumable": True})


def notify(ctx):
    options = ctx.config.section("notify")
    Path(options.notify_file).write_text(json.dumps({"greeting": options.notify_greeting,
                                                     "via_get": ctx.config.get("notify_greeting"),
                                                     "step": ctx.info.get("global_step")}))


@hookimpl
def register_options(register):
    register("notify", NotifyOptions, description="a note after training")


@hookimpl
def register_post_train_actions(register):
    register("notify", notify, order=300, auto=lambda config: bool(config.get("notify_file")))


@hookimpl
def register_commands(cli):
    @cli.command("notify-check")
    @click.argument("path")
    def notify_check(path):
        "Print the note a run left."
        click.echo(Path(path).read_text())
'''


def _install(site: Path) -> Path:
    info = site / "airo_notify-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: airo-notify\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[airo]\nnotify = airo_notify\n")
    (site / "airo_notify.py").write_text(textwrap.dedent(THIRD_PARTY))
    return site


def _airo(*args, site: Path | None, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, AIRO_CACHE=str(cache), AIRO_STRICT_PLUGINS="1")
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "airo.core", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_a_third_party_plugin_owns_its_options_end_to_end(tiny_model_dir, tmp_path):
    site = _install(tmp_path / "site")
    cache = tmp_path / "cache"
    help_all = _airo("train", "--help-all", site=site, cwd=tmp_path, cache=cache)
    assert help_all.returncode == 0, help_all.stderr
    assert "notify (plugin notify: a note after training):" in help_all.stdout
    assert "--notify_greeting (default: 'hello')" in help_all.stdout

    common = ["--model_name_or_path", tiny_model_dir, "--dataset", CONVERSATIONS, "--dataset_format", "airoboros_chat",
              "--model_max_len", "128", "--bits", "16", "--lora_r", "4", "--max_steps", "1",
              "--eval_dataset_size", "0", "--report_to", "none"]
    note = tmp_path / "note.json"
    flags = _airo("train", *common, "--output_dir", tmp_path / "a", "--notify_file", note, "--notify-greeting", "hi",
                  site=site, cwd=tmp_path, cache=cache)
    assert flags.returncode == 0, flags.stderr[-2000:]
    assert json.loads(note.read_text()) == {"greeting": "hi", "via_get": "hi", "step": 1}

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"output_dir: {tmp_path / 'b'}\nnotify:\n  notify_file: {note}\n  notify_greeting: hey\n")
    from_yaml = _airo("train", yaml_file, *common, site=site, cwd=tmp_path, cache=cache)
    assert from_yaml.returncode == 0, from_yaml.stderr[-2000:]
    assert json.loads(note.read_text())["greeting"] == "hey"
    command = _airo("notify-check", note, site=site, cwd=tmp_path, cache=cache)
    assert command.returncode == 0 and '"hey"' in command.stdout

    gone = _airo("train", *common, "--output_dir", tmp_path / "c", "--notify_file", note, site=None, cwd=tmp_path,
                 cache=cache)
    assert gone.returncode != 0 and "unknown option '--notify_file'" in gone.stderr
    assert "Traceback" not in gone.stderr
