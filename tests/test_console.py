"""airo train's output: airo's lines from rank 0; the libraries' warnings counted, not shown,
unless --verbose; no progress bar redraws outside a terminal (the log lines stay)."""

from __future__ import annotations

import pytest

from airo.core import console


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(console, "_state", {"verbose": True, "rank": 0, "hidden": 0})


@pytest.mark.parametrize("filename, library", [
    ("/venv/lib/python3.11/site-packages/transformers/trainer.py", True),
    ("/venv/lib/python3.11/site-packages/peft/utils/other.py", True),
    ("/usr/lib/python3/dist-packages/torch/nn/modules/module.py", True),
    ("/home/me/src/airo/core/data/split.py", False),
    ("/venv/lib/python3.11/site-packages/airo_plugin_example/__init__.py", False),  # a plugin concerns the user
    ("/home/me/train_helper.py", False),
    ("", False),
])
def test_library_warnings_are_told_apart(filename, library):
    assert console.from_library(filename) is library


def test_quiet_output_hides_library_warnings_and_every_other_rank(monkeypatch, capsys):
    monkeypatch.setattr(console, "_state", {"verbose": False, "rank": 0, "hidden": 0})
    console.show_warning("deprecated internals", FutureWarning, "/x/site-packages/peft/other.py", 1)
    console.show_warning("--eval_dataset_size asks for too many", UserWarning, "/repo/core/data/split.py", 21)
    assert capsys.readouterr().err == "warning: --eval_dataset_size asks for too many\n"
    monkeypatch.setitem(console._state, "rank", 1)
    console.show_warning("--eval_dataset_size asks for too many", UserWarning, "/repo/core/data/split.py", 21)
    assert capsys.readouterr().err == ""
    assert console.hidden_warnings() == 2


def test_verbose_shows_everything(capsys):
    console.show_warning("deprecated internals", FutureWarning, "/x/site-packages/peft/other.py", 1)
    assert "deprecated internals" in capsys.readouterr().err


@pytest.mark.parametrize("args, env, expected", [
    (["c.yaml", "--verbose"], {}, True),
    (["--verbose", "true", "--bits", "4"], {}, True),
    (["--verbose", "false"], {}, False),
    (["--verbose=true"], {}, True),
    (["c.yaml"], {"AIRO_VERBOSE": "1"}, True),
    (["c.yaml"], {}, False),
])
def test_verbose_is_read_from_the_raw_arguments(args, env, expected, monkeypatch):
    monkeypatch.delenv("AIRO_VERBOSE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert console.wants_verbose(args) is expected


def test_progress_prints_log_lines_without_a_bar(capsys):
    from types import SimpleNamespace

    from airo.core.training.callbacks import trainer_callbacks

    _, Progress = trainer_callbacks()
    progress = Progress(bar=False)
    state = SimpleNamespace(is_world_process_zero=True, num_input_tokens_seen=0, global_step=3, max_steps=9)
    progress.on_train_begin(None, state, None)
    progress.on_step_end(None, state, None)
    progress.on_log(None, state, None, logs={"loss": 6.1984, "learning_rate": 0.0002})
    progress.on_train_end(None, state, None)
    captured = capsys.readouterr()
    assert captured.out == "step 3: loss 6.198, learning_rate 0.0002\n"
    assert captured.err == ""  # no bar drawn


def test_a_module_that_prints_on_import_is_imported_quietly(tmp_path, monkeypatch, capsys):
    import sys

    (tmp_path / "noisy_on_import.py").write_text("print('[INFO] Running in WANDB offline mode')\nVALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    finder = console._QuietImport("noisy_on_import")
    sys.meta_path.insert(0, finder)
    try:
        import noisy_on_import

        assert noisy_on_import.VALUE == 3
        assert capsys.readouterr().out == ""
        assert finder not in sys.meta_path  # once
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        sys.modules.pop("noisy_on_import", None)


def test_quiet_output_imports_neither_torch_nor_transformers(tmp_path):
    """The commands' checks stay fast: configuring the output imports no library."""
    import subprocess
    import sys

    code = ("import sys; from airo.core.console import configure_output; configure_output(verbose=False); "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
