"""metrics.jsonl, loss.png and `airo plot`: what a run logged, kept and drawn without a Trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from airo.core.training.metrics import (METRICS_FILE, PLOT_FILE, MetricsLog, log_record, loss_points,
                                        metrics_callback, plot_metrics)
from conftest import run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> tuple[int, int]:
    """A real, decodable PNG; returns its size."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        import matplotlib.image

        return matplotlib.image.imread(path).shape[1::-1]
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def _state(step, *, main=True, epoch=None):
    from transformers import TrainerState

    state = TrainerState(is_world_process_zero=main)
    state.global_step = step
    state.epoch = epoch if epoch is not None else step / 10
    return state


def _control():
    from transformers import TrainerControl

    return TrainerControl()


ARGS = SimpleNamespace(output_dir="unused")


# -- MetricsLog ---------------------------------------------------------------------------------

def test_log_append_read_and_truncate(tmp_path):
    log = MetricsLog(tmp_path / "sub" / METRICS_FILE)
    assert log.read() == []
    assert log.truncate_after(3) == 0  # no file yet: nothing to do, nothing created
    assert not log.path.exists()
    for step in (1, 2, 3, 4):
        log.append({"step": step, "loss": 1.0 / step})
    assert [r["step"] for r in log.read()] == [1, 2, 3, 4]
    assert log.read()[1] == {"step": 2, "loss": 0.5}
    assert log.truncate_after(2) == 2
    assert [r["step"] for r in log.read()] == [1, 2]
    assert log.truncate_after(2) == 0
    assert log.path.read_text(encoding="utf-8").count("\n") == 2


def test_torn_last_line_is_neither_read_nor_glued_to_the_next(tmp_path):
    log = MetricsLog(tmp_path / METRICS_FILE)
    log.append({"step": 1, "loss": 2.0})
    with open(log.path, "a", encoding="utf-8") as fh:
        fh.write('{"step": 2, "lo')  # a run killed mid-write
    assert [r["step"] for r in log.read()] == [1]
    log.append({"step": 2, "loss": 1.5})
    assert [r["step"] for r in log.read()] == [1, 2]
    assert log.truncate_after(10) == 1  # the torn line goes, the records stay
    assert [json.loads(line)["step"] for line in log.path.read_text(encoding="utf-8").splitlines()] == [1, 2]


def test_log_record_keeps_numbers_only():
    import torch

    record = log_record({"loss": torch.tensor(1.25), "learning_rate": 2e-4, "grad_norm": float("nan"),
                         "epoch": 0.123, "note": "text", "flag": True, "total_flos": 10**18},
                        step=7, epoch=0.5)
    assert record == {"step": 7, "epoch": 0.5, "loss": 1.25, "learning_rate": 2e-4, "grad_norm": None,
                      "total_flos": 10**18}
    json.dumps(record, allow_nan=False)  # strict JSON: NaN is written as null


# -- the callback --------------------------------------------------------------------------------

def test_callback_writes_each_step_once_across_a_resume(tmp_path):
    first = metrics_callback(tmp_path, resumed_step=None)
    first.on_train_begin(ARGS, _state(0), _control())
    for step in (1, 2, 3, 4):
        first.on_log(ARGS, _state(step), _control(), logs={"loss": 5.0 - step, "epoch": step / 10})
    # killed after step 4; the newest complete checkpoint is step 2
    second = metrics_callback(tmp_path, resumed_step=2)
    second.on_train_begin(ARGS, _state(2), _control())
    for step in (3, 4, 5):
        second.on_log(ARGS, _state(step), _control(), logs={"loss": 4.5 - step})
    records = MetricsLog(tmp_path / METRICS_FILE).read()
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in records] == [4.0, 3.0, 1.5, 0.5, -0.5]  # 3 and 4 from the resumed run
    assert records[0]["epoch"] == pytest.approx(0.1)


def test_callback_truncates_before_its_first_line_without_train_begin(tmp_path):
    log = MetricsLog(tmp_path / METRICS_FILE)
    for step in (1, 2, 3):
        log.append({"step": step, "loss": 1.0})
    callback = metrics_callback(tmp_path, resumed_step=1)
    callback.on_log(ARGS, _state(2), _control(), logs={"loss": 0.5})
    callback.on_log(ARGS, _state(3), _control(), logs={"loss": 0.25})
    assert [(r["step"], r["loss"]) for r in log.read()] == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_fresh_run_drops_an_old_log(tmp_path):
    MetricsLog(tmp_path / METRICS_FILE).append({"step": 9, "loss": 1.0})
    callback = metrics_callback(tmp_path, resumed_step=None)
    callback.on_train_begin(ARGS, _state(0), _control())
    callback.on_log(ARGS, _state(1), _control(), logs={"loss": 2.0})
    assert [r["step"] for r in MetricsLog(tmp_path / METRICS_FILE).read()] == [1]


def test_only_the_main_process_writes(tmp_path):
    callback = metrics_callback(tmp_path, resumed_step=None)
    callback.plot_to = tmp_path / "out"
    callback.on_train_begin(ARGS, _state(0, main=False), _control())
    callback.on_log(ARGS, _state(1, main=False), _control(), logs={"loss": 1.0})
    callback.on_save(ARGS, _state(1, main=False), _control())
    assert not (tmp_path / METRICS_FILE).exists()
    assert not (tmp_path / "out").exists()


def test_on_save_redraws_the_plot_only_when_asked(tmp_path):
    callback = metrics_callback(tmp_path, resumed_step=None)
    for step in (1, 2, 3):
        callback.on_log(ARGS, _state(step), _control(), logs={"loss": 3.0 - step})
    callback.on_save(ARGS, _state(3), _control())
    assert not list(tmp_path.rglob("*.png"))  # no plot_to: no picture
    callback.plot_to = tmp_path / "plots"
    callback.on_log(ARGS, _state(3), _control(), logs={"eval_loss": 1.2})
    callback.on_save(ARGS, _state(3), _control())
    png = tmp_path / "plots" / PLOT_FILE
    assert assert_png(png) == (800, 450)
    first = png.read_bytes()
    callback.on_log(ARGS, _state(4), _control(), logs={"loss": 0.1})
    callback.on_train_end(ARGS, _state(4), _control())
    assert png.read_bytes() != first  # redrawn with step 4


def test_a_failing_plot_never_stops_training(tmp_path, capsys):
    callback = metrics_callback(tmp_path, resumed_step=None)
    callback.on_log(ARGS, _state(1), _control(), logs={"loss": 1.0})
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    callback.plot_to = blocker
    callback.on_save(ARGS, _state(1), _control())
    assert f"warning: could not draw {PLOT_FILE}" in capsys.readouterr().out


# -- plotting --------------------------------------------------------------------------------------

def test_plot_metrics_writes_a_png_atomically(tmp_path):
    records = [{"step": s, "epoch": s / 4, "loss": 2.0 / s} for s in range(1, 9)]
    records += [{"step": 4, "eval_loss": 0.9}, {"step": 8, "eval_loss": 0.5}, {"step": 8, "train_runtime": 3.0}]
    train, evals = loss_points(records)
    assert [s for s, _ in train] == list(range(1, 9)) and evals == [(4, 0.9), (8, 0.5)]
    out = plot_metrics(records, tmp_path / "new" / "loss.png")
    assert out == tmp_path / "new" / "loss.png"
    assert_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]  # no temp file left behind
    assert_png(plot_metrics([], tmp_path / "empty.png"))  # nothing logged yet is still a picture


def test_importing_the_plugin_and_metrics_stays_light():
    code = ("import sys, airo.plugins.plot, airo.core.training.metrics; "
            "print([m for m in ('matplotlib', 'torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- airo plot -----------------------------------------------------------------------------------

def test_airo_plot_draws_from_metrics_jsonl(tmp_path):
    log = MetricsLog(tmp_path / METRICS_FILE)
    for step in (1, 2, 3):
        log.append({"step": step, "epoch": step / 3, "loss": 1.0 / step})
    log.append({"step": 3, "epoch": 1.0, "eval_loss": 0.8})
    result = run_cli("plot", tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "3 train and 1 eval loss points" in result.stdout
    assert_png(tmp_path / PLOT_FILE)
    result = run_cli("plot", tmp_path, "--out", tmp_path / "elsewhere" / "curve.png", timeout=120)
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "elsewhere" / "curve.png")


def test_airo_plot_errors_are_one_line(tmp_path):
    def error(*args):
        result = run_cli("plot", *args, timeout=120)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: airo plot: "), result.stderr
        return lines[0]

    assert "not a folder" in error(tmp_path / "missing")
    assert f"no {METRICS_FILE} in" in error(tmp_path)
    (tmp_path / METRICS_FILE).write_text("\n", encoding="utf-8")
    assert "no logged step yet" in error(tmp_path)
    MetricsLog(tmp_path / METRICS_FILE).append({"step": 1, "learning_rate": 1e-4})
    assert "no loss or eval_loss values" in error(tmp_path)
    assert not (tmp_path / PLOT_FILE).exists()
