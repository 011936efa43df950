"""The Trainer callbacks airo adds: checkpoints airo can trust, and tokens/s on the progress bar."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..atomic import fsync_tree, is_owned, stamp, write_json
from .checkpoints import CHECKPOINT_MARKER, is_complete, rotate_checkpoints
from .dist import barrier


def format_log(step: int, logs: dict[str, Any]) -> str:
    """``step 10: loss 6.198, grad_norm 0.1102, learning_rate 0.0002, epoch 1.333``."""
    parts = []
    for key, value in logs.items():
        if key == "total_flos":
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key} {value}")
    return f"step {step}: " + ", ".join(parts)


class NothingLeftToTrain(Exception):
    """The resumed checkpoint is at or past the planned last step (e.g. a run killed while its
    post-training actions ran). Raised from ``on_train_begin``, after the Trainer restored the
    weights and state, because its loop would otherwise train one step more."""


def trainer_callbacks():
    """The Trainer callbacks airo adds (defined here so transformers is imported lazily)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    class CheckpointMarkerCallback(TrainerCallback):
        """Checkpoints airo can trust: stamped as airo's before the Trainer writes them; once
        every rank has written, fsynced and marked complete by rank 0 (with the run's options
        and data); then ``--save_total_limit`` applies to the complete ones."""

        def __init__(self, options: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                     save_total_limit: int | None = None):
            self.options = options
            self.data = data
            self.save_total_limit = save_total_limit

        @staticmethod
        def _folder(args, state) -> Path:
            return Path(args.output_dir) / f"checkpoint-{state.global_step}"

        def _begin_save(self, args, state) -> None:
            folder = self._folder(args, state)
            if state.is_world_process_zero and not is_owned(folder):
                folder.mkdir(parents=True, exist_ok=True)
                stamp(folder, "checkpoint")

        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step > 0 and state.global_step >= state.max_steps:
                raise NothingLeftToTrain(state.global_step)
            return control

        def _settle_save(self, args, state, control):
            """A step is saved once (--save_strategy epoch would save the last step twice), and
            its folder is stamped before the Trainer writes it."""
            if control.should_save and is_complete(self._folder(args, state)):
                control.should_save = False
            if control.should_save:
                self._begin_save(args, state)
            return control

        def on_step_end(self, args, state, control, **kwargs):
            # Always leave a complete checkpoint at the very end (whatever --save_strategy),
            # so a failing post-training action never costs the training.
            if state.global_step >= state.max_steps:
                control.should_save = True
            return self._settle_save(args, state, control)

        def on_epoch_end(self, args, state, control, **kwargs):
            return self._settle_save(args, state, control)

        def on_save(self, args, state, control, **kwargs):
            barrier()
            if state.is_world_process_zero:
                ckpt = self._folder(args, state)
                if ckpt.is_dir():
                    if not is_owned(ckpt):  # a save the Trainer decided on its own (--save_strategy best)
                        stamp(ckpt, "checkpoint")
                    fsync_tree(ckpt)  # every rank's files are on disk before the marker says so
                    write_json(ckpt / CHECKPOINT_MARKER, {
                        "global_step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
                        "num_input_tokens_seen": state.num_input_tokens_seen, "time": time.time(),
                        "config": self.options, "data": self.data})
                    rotate_checkpoints(args.output_dir, self.save_total_limit,
                                       keep=(ckpt, state.best_model_checkpoint))
            barrier()
            return control

    class Progress(ProgressCallback):
        """transformers' progress bar, with tokens/s (non-padding, all ranks) beside the ETA,
        each log line as ``step N: loss 6.198, grad_norm 0.11, ...`` (numbers, not quoted
        strings), and no second bar nested under it during evaluation."""

        def __init__(self):
            super().__init__()
            self.start = None
            self.start_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            self.start = time.time()
            self.start_tokens = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            super().on_step_end(args, state, control, **kwargs)
            if state.is_world_process_zero and self.start is not None and self.training_bar is not None:
                elapsed = time.time() - self.start
                tokens = state.num_input_tokens_seen - self.start_tokens
                if elapsed > 0:
                    self.training_bar.set_postfix({"tok/s": f"{tokens / elapsed:,.0f}"}, refresh=True)

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            return control  # evaluation is short next to training; one bar is enough

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                self.training_bar.write(format_log(state.global_step, logs))

    return CheckpointMarkerCallback, Progress
