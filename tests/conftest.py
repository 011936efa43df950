"""Shared fixtures: a real SentencePiece llama tokenizer and a tiny random llama, built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["airo.core.testing"]
EXAMPLE_PLUGIN = EXAMPLES / "airo-plugin-example"
EXAMPLE_SITE_VAR = "AIRO_TEST_EXAMPLE_SITE"


@pytest.fixture(scope="session", autouse=True)
def example_plugin_site(tmp_path_factory) -> Path:
    """The example third-party plugin, installed for real (`pip install --target`) into a
    folder of this test session only: the tests see it as a user's install would, and the
    user's environment is left as it was. Subprocesses find it through PYTHONPATH."""
    import importlib
    import subprocess

    import shutil

    site = tmp_path_factory.mktemp("example-plugin-site")
    # Built from a copy: pip writes build/ and *.egg-info beside the sources, and several
    # sessions (pytest -n auto's workers) building in the checkout at once race there.
    source = tmp_path_factory.mktemp("example-plugin-source") / EXAMPLE_PLUGIN.name
    shutil.copytree(EXAMPLE_PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), str(source)],
                   check=True, capture_output=True, timeout=300)
    sys.path.insert(0, str(site))
    os.environ[EXAMPLE_SITE_VAR] = str(site)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    importlib.invalidate_caches()
    from airo.core.plugins import reset_plugin_manager

    reset_plugin_manager()
    return site


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> str:
    from airo.core.testing import build_tiny_tokenizer

    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir) -> str:
    from airo.core.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer_from=tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def training_arguments_table(tmp_path_factory) -> list:
    """airo keeps the TrainingArguments option table in its cache (so building a config
    imports no transformers); built once per session and copied into each private cache."""
    home = tmp_path_factory.mktemp("airo-cache-seed")
    old = os.environ.get("AIRO_CACHE")
    os.environ["AIRO_CACHE"] = str(home)
    try:
        from airo.core import flags

        flags._cached_training_rows()
    finally:
        if old is None:
            os.environ.pop("AIRO_CACHE", None)
        else:
            os.environ["AIRO_CACHE"] = old
    tables = list(home.glob("training-arguments-*.json"))
    assert tables, "airo did not cache the TrainingArguments table"
    return tables


@pytest.fixture
def airo_env(monkeypatch, tmp_path, training_arguments_table):
    """A clean plugin manager and a private dataset cache for one test."""
    import shutil

    from airo.core.plugins import reset_plugin_manager

    cache = tmp_path / "airo-cache"
    cache.mkdir()
    for table in training_arguments_table:
        shutil.copy(table, cache / table.name)
    monkeypatch.setenv("AIRO_CACHE", str(cache))
    reset_plugin_manager()
    yield
    reset_plugin_manager()


def run_cli(*args, env=None, cwd=None, timeout=900):
    """Run the installed `airo` console script in a subprocess; returns CompletedProcess."""
    import subprocess

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "airo.core", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)
