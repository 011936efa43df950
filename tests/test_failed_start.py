"""A run that fails before it trains leaves no empty folders behind (a failed start left an
empty `runs/` and a working dir holding only airo's stamp)."""

from __future__ import annotations

import pytest

BAD = '{"instruction": "q", "output": "a"}\n{"instruction": "q", "output": "a"\n'


def _fail(tmp_path, tiny_model_dir, output_dir):
    from airo.core.config import build_config
    from airo.core.errors import DataError
    from airo.core.training import run_training

    data = tmp_path / "bad.jsonl"
    data.write_text(BAD)
    config = build_config(None, ["--model_name_or_path", tiny_model_dir, "--dataset", str(data),
                                 "--dataset_format", "alpaca", "--output_dir", str(output_dir)])
    with pytest.raises(DataError, match="line 2: malformed JSON"):
        run_training(config)


def test_folders_the_run_created_go_again(tmp_path, tiny_model_dir, airo_env):
    _fail(tmp_path, tiny_model_dir, tmp_path / "runs" / "deep" / "x")
    assert not (tmp_path / "runs").exists()


def test_the_users_folders_stay(tmp_path, tiny_model_dir, airo_env):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    _fail(tmp_path, tiny_model_dir, tmp_path / "runs" / "x")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["notes.txt"]
