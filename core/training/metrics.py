"""What a run logged, kept where the run lives: ``metrics.jsonl`` and ``loss.png``.

``WORKING_DIR/metrics.jsonl`` gets one JSON line per logging event of the Trainer
(``{"step", "epoch", "loss", "learning_rate", ...}``), appended as training goes. A resumed
run first drops the lines past the step it resumes from, so a step trained again is
never listed twice. ``loss.png`` (train loss as a line, eval loss as markers, against
the step) is redrawn at each checkpoint, and by ``airo plot`` from the file.

torch, transformers and matplotlib are imported inside the functions that need them; a
training run draws in a child process (:func:`draw_in_child`), so matplotlib never adds
to its memory.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from ..atomic import write_text
from .dist import say

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


_NOT_A_NUMBER = object()


def _number(value: Any) -> Any:
    """A logged value as a plain number, ``_NOT_A_NUMBER`` for what is not one (strings, lists).

    NaN and infinity become None (null): JSON has no spelling for them, and a line other
    tools cannot parse would hide every step after it; the key stays, so a diverged loss
    still shows."""
    if isinstance(value, bool):
        return _NOT_A_NUMBER
    if hasattr(value, "item") and callable(value.item):  # torch / numpy scalars
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return _NOT_A_NUMBER
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return _NOT_A_NUMBER


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None  # e.g. the torn last line of a run killed mid-write
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


class MetricsLog:
    """``metrics.jsonl``: append-only while training, cut back to a step on resume."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _ends_mid_line(self) -> bool:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() == 0:
                    return False
                fh.seek(-1, os.SEEK_END)
                return fh.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, allow_nan=False)
        # a crash can leave a line without its newline: never glue the next record onto it
        prefix = "\n" if self._ends_mid_line() else ""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(prefix + line + "\n")
            fh.flush()

    def read(self) -> list[dict[str, Any]]:
        """The records, in file order; lines that are not a record with a ``step`` are skipped."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [record for line in text.splitlines() if line.strip() and (record := _parse(line)) is not None]

    def truncate_after(self, step: int) -> int:
        """Drop the records logged after ``step`` (and unreadable lines); returns how many
        lines went. The file is rewritten atomically: a crash keeps the old one."""
        if not self.path.exists():
            return 0
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        kept = [line for line in lines if (record := _parse(line)) is not None and record["step"] <= step]
        dropped = sum(1 for line in lines if line.strip()) - len(kept)
        if dropped:
            write_text(self.path, "".join(line + "\n" for line in kept))
        return dropped


def log_record(logs: dict[str, Any], *, step: int, epoch: float | None) -> dict[str, Any]:
    """One ``metrics.jsonl`` line: the step, the epoch and the numbers among ``logs``."""
    epoch = _number(epoch)
    record: dict[str, Any] = {"step": int(step), "epoch": None if epoch is _NOT_A_NUMBER else epoch}
    for key, value in logs.items():
        if key in ("step", "epoch"):
            continue
        number = _number(value)
        if number is not _NOT_A_NUMBER:
            record[key] = number
    return record


def loss_points(records: Iterable[dict[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train loss, eval loss) as ``(step, loss)`` pairs."""
    train, evals = [], []
    for record in records:
        step = record.get("step")
        for key, points in (("loss", train), ("eval_loss", evals)):
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                points.append((step, float(value)))
    return train, evals


def plot_metrics(records: list[dict[str, Any]], png_path: str | os.PathLike) -> Path:
    """Draw train loss (line) and eval loss (markers) against the step into ``png_path``.

    The file is replaced atomically, so a viewer refreshing it never sees half an image.
    Draws on an Agg canvas of its own: no display is needed and pyplot's global state
    (a user's interactive figures, their chosen backend) is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train, evals = loss_points(records)
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train loss", linewidth=1.5)
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "o", label="eval loss", markersize=5)
    if train or evals:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no loss logged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.airo-tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, png_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return png_path


_DRAW = ("import sys; from airo.core.training.metrics import MetricsLog, plot_metrics; "
         "plot_metrics(MetricsLog(sys.argv[1]).read(), sys.argv[2])")


def draw_in_child(metrics_path: str | os.PathLike, png_path: str | os.PathLike, timeout: float = 300) -> Path:
    """``plot_metrics`` of the records in ``metrics_path``, run in a child process and waited
    for: imported into a training process, matplotlib (~30 MiB) would stay resident, and add
    to every step's memory, from the first checkpoint to the end of the run. Raises
    RuntimeError with the child's last error line when it fails."""
    import subprocess
    import sys

    try:
        proc = subprocess.run([sys.executable, "-c", _DRAW, str(metrics_path), str(png_path)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"drawing took more than {timeout:g} s") from None
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"the drawing process exited with code {proc.returncode}")
    return Path(png_path)


def metrics_callback(working_dir: str | os.PathLike, *, resumed_step: int | None):
    """A ``transformers.TrainerCallback`` writing ``working_dir/metrics.jsonl`` (main process
    only). Before the first line, records past ``resumed_step`` are dropped (all of them for
    a fresh run: ``None`` is step 0). Set its ``plot_to`` to a folder to get ``loss.png``
    redrawn there at each checkpoint and at the end of training."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self):
            self.log = MetricsLog(Path(working_dir) / METRICS_FILE)
            self.resumed_step = int(resumed_step or 0)
            self.plot_to: str | os.PathLike | None = None
            self._ready = False

        def _prepare(self) -> None:
            if not self._ready:
                self.log.truncate_after(self.resumed_step)
                self._ready = True

        def _redraw(self) -> None:
            if self.plot_to is None:
                return
            try:
                draw_in_child(self.log.path, Path(self.plot_to) / PLOT_FILE)
            except Exception as exc:  # noqa: BLE001 - a picture must never cost the training
                say(f"warning: could not draw {PLOT_FILE}: {exc}")

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self._prepare()
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                self._prepare()
                self.log.append(log_record(logs, step=state.global_step, epoch=state.epoch))
            return control

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self._redraw()
            return control

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self._redraw()
            return control

    return MetricsCallback()
