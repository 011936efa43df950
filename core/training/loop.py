"""``Trainer.train`` under airo's guards: the NaN/inf check, nothing left to train, a failed write."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

from ..atomic import remove_owned
from ..errors import AiroError
from ..plugins import describe_exception
from .callbacks import FiniteGuard, NothingLeftToTrain, diverged, nonfinite_weights
from .checkpoints import is_complete
from .dist import say
from .resume import last_complete


def fit(trainer, resume: Path | None, start_step: int, main: bool) -> dict[str, Any]:
    """``Trainer.train`` (resuming restores optimizer, scheduler, RNG and data position);
    returns its metrics. A checkpoint already at the last step trains nothing.

    A loss, gradient norm or trainable weight that stops being finite stops the run
    (:class:`~airo.core.training.callbacks.TrainingDiverged`); the weights are checked
    once more here, before any post-training action runs. A failed write (a full disk
    mid-checkpoint) is an error saying which checkpoint the same command resumes from."""
    for callback in trainer.callback_handler.callbacks:
        if hasattr(callback, "guard") and hasattr(callback, "resumed_from"):  # the checkpoint marker
            callback.guard = FiniteGuard(trainer)
            callback.resumed_from = resume
    metrics: dict[str, Any] = {}
    try:
        metrics = dict(trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None).metrics)
    except NothingLeftToTrain:
        trainer.is_in_train = False
        say(f"{resume} is at the planned last step ({start_step}): nothing left to train", main=main)
    except OSError as exc:
        raise write_failed(trainer, exc) from exc
    bad = nonfinite_weights(trainer.model)
    if bad is not None:
        raise diverged(trainer.args, trainer.state.global_step, f"the trainable weights are not finite ({bad})")
    if trainer.state.global_step <= start_step:
        # nothing was trained in this call (resumed at the last step): the Trainer reports a
        # train_loss of 0.0, which says nothing about the run
        metrics.pop("train_loss", None)
    return metrics


def write_failed(trainer, exc: OSError) -> AiroError:
    """A write that failed during training (a full disk mid-checkpoint): which one, and that
    the last complete checkpoint is where the same command resumes. The interrupted
    checkpoint is airo's and unmarked, so it never counts (and the next run removes it)."""
    working_dir = Path(trainer.args.output_dir)
    folder = working_dir / f"checkpoint-{trainer.state.global_step}"
    reason = exc.strerror or describe_exception(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    failed = Path(os.path.abspath(exc.filename)) if isinstance(exc.filename, (str, os.PathLike)) else None
    if (folder.is_dir() and not is_complete(folder)) or (failed is not None and folder.absolute() in failed.parents):
        what = f"writing {folder.name} failed: {reason}{where}"
        if folder.is_dir() and trainer.args.world_size <= 1:  # no other process writes into it: free the space
            with contextlib.suppress(OSError):  # the disk may be full: the message matters more
                remove_owned(folder, what="checkpoint")
            what += "; its partial files are removed"
    else:
        what = f"a write failed at step {trainer.state.global_step}: {reason}{where}"
    last = last_complete(working_dir)
    space = "free some space, then " if exc.errno == errno.ENOSPC else ""
    if last is not None:
        then = f"{last.name} is complete: {space}re-run the same command to resume from it"
    else:
        then = f"no checkpoint is complete yet: {space}re-running the same command trains from the start"
    return AiroError(f"{what}; {then} (checkpoints in {working_dir})")
