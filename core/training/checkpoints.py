"""Checkpoints: which are complete, which are airo's, and whether this command may resume one.

A checkpoint counts only once marked complete: ``checkpoint-N/airo-checkpoint-complete.json``
(written, fsynced, after every rank finished writing and every file was fsynced) holding
the step, the run's options and the data it was trained on. Unreadable state means "not
complete", never "complete". airo stamps each checkpoint folder before the Trainer writes
it, so an unmarked folder is either airo's (a save interrupted: safe to remove) or not
(another tool's: never resumed from, never deleted).

Resuming is refused when the command would continue a different training: other options
(beyond :data:`RESUMABLE_CHANGES`), other data (content hash, example count), or another
identity: base model weights or config, tokenizer files, or a plugin that shapes tokens
(:mod:`airo.core.identity`), each change named. ``--resume_from_checkpoint PATH`` may
resume across an identity change, with a warning listing it. A run finished in
``completed`` is never trained again; a re-run that differs from it is an error.

Changing the run's length on resume (``--max_steps``, ``--num_train_epochs``) is allowed when
the learning-rate schedule of both lengths agrees on every step trained so far and the next
one (:mod:`airo.core.training.schedule`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..atomic import KIND_CHECKPOINT, OWNER_STAMP, is_owned, read_json_dict, remove_owned, stamp
from ..errors import ConfigError
from .distributed import checkpoint_backend, is_sharded_checkpoint
from .schedule import option_defaults as _option_defaults
from .schedule import schedule_args, schedule_mismatch  # noqa: F401 - here since before the split

COMPLETED_FILE = "completed"
CHECKPOINT_MARKER = "airo-checkpoint-complete.json"
SECRET_OPTIONS = ("hub_token",)

# Options a resumed run may change: they do not change what is computed (epochs/max_steps
# only extend or shorten the run). Everything else must match the checkpoint's. Plugin
# options say so themselves (``metadata={"resumable": True}``).
RESUMABLE_CHANGES = frozenset({
    # how long
    "num_train_epochs", "max_steps",
    # folders, actions, merge and save format
    "output_dir", "working_dir", "post_train_actions", "dataset_cache_dir", "resume_from_checkpoint",
    # logging and reporting
    "logging_strategy", "logging_steps", "logging_first_step", "log_on_each_node", "logging_nan_inf_filter",
    "include_num_input_tokens_seen", "log_level", "log_level_replica", "disable_tqdm", "report_to", "run_name",
    "project", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id", "skip_memory_metrics", "debug",
    # evaluation
    "eval_strategy", "eval_steps", "eval_delay", "per_device_eval_batch_size", "prediction_loss_only",
    "eval_on_start", "eval_do_concat_batches", "eval_use_gather_object", "eval_accumulation_steps",
    "include_for_metrics", "batch_eval_metrics", "bf16_full_eval", "fp16_full_eval", "max_eval_samples",
    "metric_for_best_model", "greater_is_better", "load_best_model_at_end",
    # saving and the hub
    "save_strategy", "save_steps", "save_total_limit", "save_on_each_node", "save_only_model",
    "enable_jit_checkpoint", "restore_callback_states_from_checkpoint", "push_to_hub", "hub_token",
    "hub_private_repo", "hub_model_id", "hub_strategy", "hub_always_push", "hub_revision",
    # data loading, memory and launch details
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "on_bad_record",
    "activation_checkpointing", "activation_checkpointing_kwargs", "gradient_checkpointing",
    "gradient_checkpointing_kwargs", "torch_empty_cache_steps", "attn_implementation", "use_flash_attention_2",
    "trust_remote_code", "ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_broadcast_buffers",
    "ddp_static_graph", "ddp_backend", "ddp_timeout", "local_rank", "do_train", "do_eval", "do_predict",
    "use_cache",
})


# -- reading state ---------------------------------------------------------------------------

def _has_step(data: dict[str, Any] | None) -> bool:
    return data is not None and isinstance(data.get("global_step"), int) and not isinstance(data["global_step"], bool)


def read_marker(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The completion marker's content, or None when missing or unreadable (= not complete)."""
    data = read_json_dict(Path(checkpoint) / CHECKPOINT_MARKER)
    return data if _has_step(data) else None


def is_complete(checkpoint: str | os.PathLike) -> bool:
    return read_marker(checkpoint) is not None


def read_completed(working_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``working_dir/completed`` when it is a readable record of a finished run, else None."""
    data = read_json_dict(Path(working_dir) / COMPLETED_FILE)
    return data if _has_step(data) else None


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith("checkpoint-"):
        return None
    tail = name[len("checkpoint-"):]
    return int(tail) if tail.isdigit() else None


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(((s, p) for p in root.iterdir() if p.is_dir() and (s := checkpoint_step(p)) is not None),
                  key=lambda sp: sp[0])


def is_airo_checkpoint(path: Path) -> bool:
    """Written by airo: marked complete, or stamped when its save began."""
    return is_complete(path) or is_owned(path)


def find_resume_checkpoint(working_dir: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """(newest complete checkpoint or None, airo's unmarked ones newer than it: left by an
    interrupted save, safe to remove).

    ``checkpoint-N`` folders airo did not write are never resumed from nor deleted: their
    presence is a ConfigError naming them, since the Trainer would write into a folder of
    the same name.
    """
    found = list_checkpoints(working_dir)
    foreign = [p for _, p in found if not is_airo_checkpoint(p)]
    if foreign:
        names = ", ".join(p.name for p in foreign)
        raise ConfigError(f"the working dir {working_dir} holds checkpoint folders ({names}) that airo did not write "
                          f"(no {CHECKPOINT_MARKER} nor {OWNER_STAMP}): airo will neither resume from nor delete them. "
                          "Use a new --working_dir, or move them out of this one.")
    complete = [p for _, p in found if is_complete(p)]
    best = complete[-1] if complete else None
    best_step = checkpoint_step(best) if best else -1
    incomplete = [p for s, p in found if s > best_step and not is_complete(p)]
    return best, incomplete


def rotate_checkpoints(working_dir: str | os.PathLike, limit: int | None, *, keep: list | tuple = ()) -> list[Path]:
    """``--save_total_limit``: delete all but the newest ``limit`` *complete* checkpoints.

    Unmarked checkpoints are not counted and not touched; those in ``keep`` (the one just
    marked, the best one) are never deleted. Returns the deleted folders.
    """
    if not limit or limit <= 0:
        return []
    kept = {Path(k).resolve() for k in keep if k}
    complete = [p for _, p in list_checkpoints(working_dir) if is_complete(p)]
    deleted = []
    for path in complete[:-limit]:
        if path.resolve() in kept or path.is_symlink():  # a link is no checkpoint to delete through
            continue
        if not is_owned(path):  # marked by an older airo, never stamped: all of it airo's
            stamp(path, KIND_CHECKPOINT)
        # the marker goes first: a crash mid-delete leaves an unmarked (but stamped, so removable) folder
        (path / CHECKPOINT_MARKER).unlink(missing_ok=True)
        remove_owned(path)  # only the files its stamp lists: a file a user put there stays
        deleted.append(path)
    return deleted


# -- may this command resume it? ---------------------------------------------------------------

def is_deepspeed_checkpoint(path: Path) -> bool:
    """A checkpoint in a sharded format (DeepSpeed's): see :mod:`airo.core.training.distributed`."""
    return is_sharded_checkpoint(path)


def missing_resume_files(path: Path) -> list[str]:
    """What a checkpoint lacks to continue the run exactly (weights, optimizer, scheduler, RNG,
    state); what its format's files are is the distributed backend's to say."""
    missing = []
    if read_json_dict(path / "trainer_state.json") is None:
        missing.append("trainer_state.json (readable)")
    missing += checkpoint_backend(path).missing_checkpoint_files(path)
    if not any(path.glob("rng_state*.pth")):
        missing.append("rng_state*.pth")
    return missing


def check_explicit_resume(path: str | os.PathLike) -> list[str]:
    """``--resume_from_checkpoint PATH``: ConfigError unless it can continue a run exactly.
    Returns notes for the run summary (e.g. a checkpoint another tool wrote)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
    missing = missing_resume_files(path)
    if missing:
        raise ConfigError(f"--resume_from_checkpoint {path} cannot continue a run exactly: it lacks "
                          f"{', '.join(missing)}. Resuming without them would restart the optimizer, schedule or "
                          "data order; pick a complete checkpoint, or start a new run with --model_name_or_path.")
    if is_complete(path):
        return []
    refusal = checkpoint_backend(path).refuse_unmarked(path)
    if refusal:
        raise ConfigError(refusal)
    return [f"{path} was not written by airo (no {CHECKPOINT_MARKER}): its options and data cannot be checked "
            "against this command's"]


def options_snapshot(config) -> dict[str, Any]:
    """The run's options as stored in checkpoint markers and ``completed`` (secrets left out)."""
    data = json.loads(json.dumps(config.to_dict(), default=str))
    for key in SECRET_OPTIONS:
        if data.get(key) is not None:
            data[key] = "<redacted>"
    return data


def changed_options(before: Any, config, *, ignore: frozenset[str] = frozenset()) -> list[str]:
    """Options whose value differs from ``before`` (a stored snapshot), as ``name (old -> new)``;
    an option missing on one side counts as its default."""
    if not isinstance(before, dict):
        return []
    now = options_snapshot(config)
    try:
        defaults = _option_defaults()
    except Exception:  # noqa: BLE001 - transformers missing: compare what is stored
        defaults = {}
    changed = []
    for key in sorted(set(before) | set(now)):
        if key in ignore:
            continue
        old, new = before.get(key, defaults.get(key)), now.get(key, defaults.get(key))
        if old != new:
            changed.append(f"{key} ({old!r} -> {new!r})")
    return changed


def _refuse(checkpoint: Path, what: str) -> ConfigError:
    return ConfigError(
        f"{checkpoint} was trained with {what}. Resuming would mix two different trainings. To train anew use a new "
        f"--working_dir (or remove {checkpoint.parent}); to continue the run, use what it was trained with. "
        "(Epochs/max_steps, logging, evaluation, saving, reporting, output folders and post-training actions may "
        "change on resume.)")


def check_resume_options(checkpoint: str | os.PathLike, config) -> None:
    """ConfigError when this run's options differ from the checkpoint's beyond :data:`RESUMABLE_CHANGES`."""
    marker = read_marker(checkpoint) or {}
    from ..config import resumable_options

    changed = changed_options(marker.get("config"), config, ignore=RESUMABLE_CHANGES | resumable_options())
    if changed:
        raise _refuse(Path(checkpoint), f"other options than this command's: {'; '.join(changed)}")


def data_changes(recorded: Any, *, content_hash: str | None = None, train_examples: int | None = None,
                 eval_examples: int | None = None, processes: int | None = None) -> list[str]:
    """How this run's data differs from what a marker recorded (``{"content_hash", ...}``)."""
    if not isinstance(recorded, dict):
        return []
    changes = []
    old_hash = recorded.get("content_hash")
    if content_hash is not None and old_hash and old_hash != content_hash:
        changes.append(f"the dataset's content (sha256 {old_hash[:12]}… -> {content_hash[:12]}…)")
    for key, now, label in (("train_examples", train_examples, "training examples"),
                            ("eval_examples", eval_examples, "eval examples"),
                            ("processes", processes, "processes sharing the batches")):
        old = recorded.get(key)
        if now is not None and isinstance(old, int) and old != now:
            changes.append(f"the number of {label} ({old} -> {now})")
    return changes


def check_resume_data(checkpoint: str | os.PathLike, **now: Any) -> None:
    """ConfigError when the data differs from what the checkpoint was trained on (see :func:`data_changes`)."""
    marker = read_marker(checkpoint) or {}
    changes = data_changes(marker.get("data"), **now)
    if changes:
        raise _refuse(Path(checkpoint), "other data than this command's: " + "; ".join(changes))


# -- the run's identity: base model, tokenizer, plugins ------------------------------------------

def check_resume_identity(checkpoint: str | os.PathLike, identity: dict[str, Any] | None, *,
                          explicit: bool = False) -> list[str]:
    """ConfigError when the base model, the tokenizer or a token-shaping plugin differs from
    what ``checkpoint`` was trained with (see :mod:`airo.core.identity`). With an explicit
    ``--resume_from_checkpoint`` the differences are returned instead, for a loud warning."""
    from ..identity import identity_changes

    marker = read_marker(checkpoint) or {}
    if identity is None or not isinstance(marker.get("identity"), dict):
        return []  # not computed here (another rank), or a checkpoint from before identities were recorded
    changes = identity_changes(marker["identity"], identity)
    if changes and not explicit:
        checkpoint = Path(checkpoint)
        raise ConfigError(
            f"{checkpoint} was trained on another base model, tokenizer or plugin than this command's: "
            f"{'; '.join(changes)}. Resuming would mix two different trainings. To train anew use a new "
            f"--working_dir (or remove {checkpoint.parent}); to continue the run, restore what it was trained with; "
            f"to resume from it anyway, pass --resume_from_checkpoint {checkpoint} (airo then warns and goes on).")
    return changes


# -- the run's length (the schedule: :mod:`.schedule`) ------------------------------------------

def check_resume_length(checkpoint: str | os.PathLike, args, new_total: int, trained: int | None = None) -> None:
    """ConfigError when resuming ``checkpoint`` as a run of ``new_total`` steps would follow
    another learning-rate schedule than a run of that length from the start."""
    marker = read_marker(checkpoint) or {}
    trained = marker.get("global_step") if trained is None else trained
    if not isinstance(trained, int):
        return
    problem = schedule_mismatch(args, trained, marker.get("max_steps"), new_total)
    if problem:
        raise ConfigError(f"cannot resume {checkpoint} with another length: {problem}.")
