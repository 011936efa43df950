"""Fail fast: a mistyped model or dataset path, an unknown format or template, a Hub name that
cannot be reached are errors in seconds, before any model loads, leaving nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, REPO

DEMO = EXAMPLES / "demo.yaml"

# Runs `airo ARGS` and reports whether torch was ever imported (a model load imports it).
PROBE = """
import json, sys
from airo.core.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def _airo(*args, cwd: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict, float]:
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    started = time.time()
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=120)
    elapsed = time.time() - started
    probe = json.loads(proc.stderr.strip().splitlines()[-1])
    return proc, probe, elapsed


def _fails_fast(tmp_path, *args, cwd=None, needle: str, env=None) -> str:
    cwd = cwd or REPO
    before = set(tmp_path.iterdir())
    proc, probe, elapsed = _airo(*args, "--output_dir", tmp_path / "out", "--working_dir", tmp_path / "work",
                                 "--merged_output_dir", tmp_path / "merged", cwd=cwd, env=env)
    print(f"{args[:3]}: {elapsed:.2f}s")
    assert probe["code"] not in (0, None), proc.stderr
    assert not probe["torch"], "a model (or torch) was loaded before the error"
    assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert set(tmp_path.iterdir()) == before  # nothing left behind: no output, no working dir
    assert elapsed < 5, f"took {elapsed:.1f}s"  # typically well under a second
    return proc.stderr


def test_a_mistyped_local_model_path(tmp_path, airo_env):
    err = _fails_fast(tmp_path, "train", DEMO, "--model_name_or_path", "examples/tiny-lama",
                      needle="no such folder")
    assert "Did you mean 'examples/tiny-llama'?" in err


def test_a_relative_model_path_that_does_not_exist(tmp_path, airo_env):
    _fails_fast(tmp_path, "train", DEMO, "--model_name_or_path", "./models/llama-7b",
                needle=f"no such folder {REPO / 'models' / 'llama-7b'}")


def test_the_quick_start_run_from_another_folder(tmp_path, airo_env):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    err = _fails_fast(tmp_path, "train", DEMO, cwd=elsewhere, needle="examples/tiny-llama")
    assert f"set at {DEMO}, line" in err and f"resolved from the current directory, {elsewhere}" in err


def test_a_hub_name_offline_fails_once(tmp_path, airo_env):
    err = _fails_fast(tmp_path, "train", DEMO, "--model_name_or_path", "someone/some-model",
                      needle="not in the local Hub cache and HF_HUB_OFFLINE is set")
    assert err.count("error:") == 1


def test_a_missing_dataset_file(tmp_path, airo_env):
    _fails_fast(tmp_path, "train", DEMO, "--dataset", "examples/data/conversation.json",
                needle="examples/data/conversation.json: file not found")


@pytest.mark.parametrize("flags, needle", [
    (["--dataset_format", "airoboros-chat"], "unknown dataset format 'airoboros-chat'. Did you mean 'airoboros_chat'?"),
    (["--prompt_template", "llama2"], "unknown prompt template 'llama2'. Did you mean 'llama-2'?"),
])
def test_an_unknown_format_or_template(tmp_path, airo_env, flags, needle):
    _fails_fast(tmp_path, "train", DEMO, *flags, needle=needle)


def test_preview_and_preprocess_check_first_too(tmp_path, airo_env):
    proc, probe, _ = _airo("preview", DEMO, "--model_name_or_path", "examples/tiny-lama", cwd=REPO)
    assert probe["code"] != 0 and not probe["torch"] and "no such folder" in proc.stderr
    proc, probe, _ = _airo("preprocess", DEMO, "--dataset", "nope.jsonl", "-o", tmp_path / "pre", cwd=REPO)
    assert probe["code"] != 0 and not probe["torch"] and "nope.jsonl: file not found" in proc.stderr
    assert not (tmp_path / "pre").exists()


def test_is_hub_id():
    from airo.core.preflight import is_hub_id

    for good in ("gpt2", "meta-llama/Llama-2-7b-hf", "org/model.v1"):
        assert is_hub_id(good), good
    for bad in ("./x", "/abs/path", "a/b/c", "org--x/y", "a..b", "~/m", "with space"):
        assert not is_hub_id(bad), bad


def test_help_all_and_config_building_import_no_transformers(tmp_path, airo_env):
    """The TrainingArguments table is kept in airo's cache per transformers version, so
    `--help-all` and every check above answer in well under a second."""
    proc, probe, elapsed = _airo("train", "--help-all", cwd=tmp_path)
    assert probe["code"] == 0 and not probe["torch"], proc.stderr
    assert "--learning_rate (default: 0.0002)" in proc.stdout and "qlora (plugin loaders" in proc.stdout
    print(f"--help-all: {elapsed:.2f}s")
    assert elapsed < 5
