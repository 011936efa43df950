"""The Trainer callbacks airo adds: checkpoints airo can trust, and tokens/s on the progress bar."""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ..atomic import KIND_CHECKPOINT, fsync_tree, is_owned, owned_entries, stamp, write_json
from ..errors import AiroError
from .checkpoints import CHECKPOINT_MARKER, check_resume_length, is_complete, list_checkpoints, rotate_checkpoints
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


class TrainingDiverged(AiroError):
    """The loss, the gradient norm or the trainable weights stopped being finite numbers."""


def _local(param):
    """The part of a parameter this process holds (a ZeRO-3 shard, an FSDP DTensor's local part)."""
    shard = getattr(param, "ds_tensor", None)
    if shard is not None:
        return shard
    return param.to_local() if hasattr(param, "to_local") else param


def _any_rank(flag: bool, device) -> bool:
    """``flag`` on any process (a collective: every rank calls it at the same point)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([1.0 if flag else 0.0], device=device if device is not None else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def nonfinite_weights(model) -> str | None:
    """The name of the first trainable parameter holding a NaN or an infinity (``"on another
    process"`` when only another rank's shard does), else None. One reduction per parameter
    with no copy of it (a sum accumulated in float64: finite exactly when every element of
    a float32/bf16/fp16 tensor is) and one read from each device: cheap for LoRA, one pass
    over the weights for a full fine-tune. A collective in a distributed run."""
    import torch

    sums: dict[Any, list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        t = _local(param).detach()
        if t.numel() == 0 or not t.is_floating_point():
            continue
        acc = torch.float32 if t.device.type == "mps" else torch.float64
        sums.setdefault(t.device, []).append((name, t.sum(dtype=acc)))
    bad = None
    device = None
    for device, named in sums.items():
        values = torch.stack([v for _, v in named]).tolist()  # one device-to-host read per device
        bad = next((n for (n, _), v in zip(named, values) if not math.isfinite(v)), None)
        if bad is not None:
            break
    if _any_rank(bad is not None, device) and bad is None:
        return "on another process"
    return bad


class FiniteGuard:
    """Watches each optimizer step's loss and gradient norm for NaN/inf, at no extra cost per
    micro-batch: the losses are summed on the device as the Trainer returns them, and the
    sum and the gradient norm (which the Trainer computes anyway) are read back together
    once per optimizer step, after it. The Trainer's own ``logging_nan_inf_filter`` (on by
    default) already reads each micro-batch's loss, so this adds one small read per step;
    with the filter off, it is the only read. The filter keeps a NaN loss out of the logs;
    this stops the run. A step the fp16 loss scaler skipped (its gradients overflowed, the
    weights are unchanged) is the scaler's business, not an error."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.loss = None
        self.grad_norm = None
        step = trainer.training_step

        def training_step(*args, **kwargs):
            loss = step(*args, **kwargs)
            value = loss.detach().float().sum()
            self.loss = value if self.loss is None else self.loss + value
            return loss

        trainer.training_step = training_step
        get_grad_norm = getattr(trainer, "_get_grad_norm", None)
        if get_grad_norm is not None:
            def grad_norm(*args, **kwargs):
                self.grad_norm = get_grad_norm(*args, **kwargs)
                return self.grad_norm

            trainer._get_grad_norm = grad_norm

    def problem(self) -> str | None:
        """What went non-finite in the step just taken, or None; forgets the step."""
        import torch

        loss, norm, self.loss, self.grad_norm = self.loss, self.grad_norm, None, None
        values = {}
        tensors = [(k, v) for k, v in (("loss", loss), ("grad_norm", norm)) if isinstance(v, torch.Tensor)]
        if len(tensors) == 2 and tensors[0][1].device == tensors[1][1].device:
            read = torch.stack([v.float().reshape(()) for _, v in tensors]).tolist()  # one read
            values = dict(zip((k for k, _ in tensors), read))
        else:
            values = {k: float(v) for k, v in tensors}
        if isinstance(norm, (int, float)):
            values["grad_norm"] = float(norm)
        if "loss" in values and not math.isfinite(values["loss"]):
            return f"the training loss is {values['loss']}"
        if "grad_norm" in values and not math.isfinite(values["grad_norm"]):
            if getattr(self.trainer.accelerator, "optimizer_step_was_skipped", False):
                return None
            return f"the gradient norm is {values['grad_norm']}"
        return None


def diverged(args, step: int, what: str) -> TrainingDiverged:
    """The one-line error for a run whose numbers stopped being finite."""
    complete = [p for _, p in list_checkpoints(args.output_dir) if is_complete(p)]
    kept = (f"the last complete checkpoint, {complete[-1]}, is kept (re-running the same command resumes there, "
            "and will likely diverge again)") if complete else "no checkpoint was complete yet"
    return TrainingDiverged(
        f"training diverged at step {step}: {what}. Stopped: nothing after it is marked complete, no post-training "
        f"action ran and no output was written; {kept}. Lower --learning_rate (it is {args.learning_rate:g}) or "
        "look at the data, and train with a new --working_dir")


def trainer_callbacks():
    """The Trainer callbacks airo adds (defined here so transformers is imported lazily)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    class CheckpointMarkerCallback(TrainerCallback):
        """Checkpoints airo can trust: stamped as airo's before the Trainer writes them; once
        every rank has written, fsynced and marked complete by rank 0 (with the run's options
        and data); then ``--save_total_limit`` applies to the complete ones."""

        def __init__(self, options: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                     save_total_limit: int | None = None, identity: dict[str, Any] | None = None):
            self.options = options
            self.data = data
            self.identity = identity  # base model, tokenizer, plugins (airo.core.identity)
            self.save_total_limit = save_total_limit
            self.guard: FiniteGuard | None = None  # set by the recipe once the Trainer exists
            self.resumed_from: Path | None = None
            self._weights_checked = -1  # the step whose trainable weights were found finite

        def _check_weights(self, args, state, model) -> None:
            """Never mark (nor write) a checkpoint whose trainable weights are not finite."""
            if model is None or self._weights_checked == state.global_step:
                return
            bad = nonfinite_weights(model)
            if bad is not None:
                raise diverged(args, state.global_step, f"the trainable weights are not finite ({bad})")
            self._weights_checked = state.global_step

        @staticmethod
        def _folder(args, state) -> Path:
            return Path(args.output_dir) / f"checkpoint-{state.global_step}"

        def _begin_save(self, args, state) -> None:
            folder = self._folder(args, state)
            if state.is_world_process_zero and not is_owned(folder):
                created = not folder.exists()
                folder.mkdir(parents=True, exist_ok=True)
                try:
                    stamp(folder, "checkpoint")
                except BaseException:
                    # an unstamped folder would look like another tool's checkpoint to the
                    # next run (a full disk fails right here): leave none
                    if created:
                        shutil.rmtree(folder, ignore_errors=True)
                    raise

        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step > 0 and state.global_step >= state.max_steps:
                raise NothingLeftToTrain(state.global_step)
            if self.resumed_from is not None:  # the step count is the Trainer's, now that the data is known
                check_resume_length(self.resumed_from, args, state.max_steps, state.global_step)
            return control

        def _settle_save(self, args, state, control, model=None):
            """A step is saved once (--save_strategy epoch would save the last step twice), and
            its folder is stamped before the Trainer writes it."""
            if control.should_save and is_complete(self._folder(args, state)):
                control.should_save = False
            if control.should_save:
                self._check_weights(args, state, model)
                self._begin_save(args, state)
            return control

        def on_step_end(self, args, state, control, **kwargs):
            problem = self.guard.problem() if self.guard is not None else None
            if problem is not None:
                raise diverged(args, state.global_step, problem)
            # Always leave a complete checkpoint at the very end (whatever --save_strategy),
            # so a failing post-training action never costs the training.
            if state.global_step >= state.max_steps:
                control.should_save = True
            return self._settle_save(args, state, control, kwargs.get("model"))

        def on_epoch_end(self, args, state, control, **kwargs):
            return self._settle_save(args, state, control, kwargs.get("model"))

        def on_save(self, args, state, control, **kwargs):
            try:
                self._check_weights(args, state, kwargs.get("model"))  # a save the Trainer decided on its own
            except TrainingDiverged:
                ckpt = self._folder(args, state)
                if state.is_world_process_zero and ckpt.is_dir() and not is_owned(ckpt):
                    stamp(ckpt, "checkpoint")  # airo's and unmarked: the next run removes it
                raise
            barrier()
            if state.is_world_process_zero:
                ckpt = self._folder(args, state)
                if ckpt.is_dir():
                    fsync_tree(ckpt)  # every rank's files are on disk before the marker says so
                    # the stamp lists what the save wrote (and the marker): removing the checkpoint
                    # (--save_total_limit) removes only those; also a save the Trainer decided alone
                    stamp(ckpt, KIND_CHECKPOINT, files=[*owned_entries(ckpt), CHECKPOINT_MARKER])
                    write_json(ckpt / CHECKPOINT_MARKER, {
                        "global_step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
                        "num_input_tokens_seen": state.num_input_tokens_seen, "time": time.time(),
                        "config": self.options, "data": self.data, "identity": self.identity})
                    rotate_checkpoints(args.output_dir, self.save_total_limit,
                                       keep=(ckpt, state.best_model_checkpoint))
            barrier()
            return control

    class Progress(ProgressCallback):
        """transformers' progress bar, with tokens/s (non-padding, all ranks) beside the ETA,
        each log line as ``step N: loss 6.198, grad_norm 0.11, ...`` (numbers, not quoted
        strings), and no second bar nested under it during evaluation."""

        def __init__(self, bar: bool | None = None):
            super().__init__()
            # a bar only on a terminal: in a log file or CI its redraws are noise; the log
            # lines are printed either way
            self.bar = sys.stderr.isatty() if bar is None else bar
            self.start = None
            self.start_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            if self.bar:
                super().on_train_begin(args, state, control, **kwargs)
            self.start = time.time()
            self.start_tokens = state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **kwargs):
            if self.training_bar is not None:
                super().on_train_end(args, state, control, **kwargs)

        def on_step_end(self, args, state, control, **kwargs):
            if self.training_bar is None:
                return
            super().on_step_end(args, state, control, **kwargs)
            if state.is_world_process_zero and self.start is not None and self.training_bar is not None:
                elapsed = time.time() - self.start
                tokens = state.num_input_tokens_seen - self.start_tokens
                if elapsed > 0:
                    self.training_bar.set_postfix({"tok/s": f"{tokens / elapsed:,.0f}"}, refresh=True)

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            return control  # evaluation is short next to training; one bar is enough

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not (state.is_world_process_zero and logs):
                return
            if self.training_bar is not None:
                self.training_bar.write(format_log(state.global_step, logs))
            elif not self.bar:
                print(format_log(state.global_step, logs), flush=True)

    return CheckpointMarkerCallback, Progress
