"""Where a run starts: finished already (``completed``), or from which checkpoint, checked
against this command before anything loads; and the data's record checkpoints carry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import AiroError, ConfigError
from ..identity import identity_changes, run_identity
from .checkpoints import (COMPLETED_FILE, changed_options, check_explicit_resume, check_resume_data,
                          check_resume_identity, check_resume_length, check_resume_options, data_changes,
                          find_resume_checkpoint, is_complete, list_checkpoints, read_completed, read_marker,
                          schedule_args)
from .context import TrainResult
from .dist import rank, say


def finished_result(config: TrainConfig, working_dir: Path, data_hash: str | None, main: bool) -> TrainResult | None:
    """The result of a finished run (``completed``), or None when there is none to trust.
    A command that differs from the finished run (options, data, base model, tokenizer,
    plugins) is a ConfigError saying what differs: it would not get the training it asks for."""
    done = read_completed(working_dir)
    if done is None:
        if (working_dir / COMPLETED_FILE).exists():
            say(f"note: {working_dir / COMPLETED_FILE} is not a readable record of a finished run; ignoring it and "
                "looking for checkpoints", main=main)
        return None
    options = changed_options(done.get("config"), config, ignore=frozenset({"resume_from_checkpoint"}))  # how it got there
    changes = ([f"options: {', '.join(options)}"] if options else []) \
        + data_changes(done.get("data"), content_hash=data_hash)
    if main and isinstance(done.get("identity"), dict):
        changes += identity_changes(done["identity"], run_identity(config))
    if changes:
        marker = working_dir / COMPLETED_FILE
        hint = ""
        length_only = all(c.split(" (")[0] in ("num_train_epochs", "max_steps") for c in options)
        if options and length_only and len(changes) == 1 and last_complete(working_dir) is not None:
            hint = (f"; to extend the finished run instead, remove {marker}: the re-run resumes from "
                    f"{last_complete(working_dir).name} when the learning-rate schedule allows another length")
        raise ConfigError(
            f"the run in {working_dir} is already complete (step {done['global_step']}, {marker}) and this command "
            f"differs from it: {'; '.join(changes)}. Nothing was trained and its outputs are as they were. To train "
            f"with this command, use a new --working_dir (or remove {working_dir}){hint}")
    return TrainResult(output_dir=config.run.output_dir, working_dir=str(working_dir), global_step=done["global_step"],
                       metrics=done.get("metrics", {}), final_loss=done.get("final_loss"), already_complete=True,
                       outputs=done.get("outputs", {}), actions=done.get("actions", []), is_main_process=main)


def last_complete(working_dir: Path) -> Path | None:
    complete = [p for _, p in list_checkpoints(working_dir) if is_complete(p)]
    return complete[-1] if complete else None


def resume_point(config: TrainConfig, working_dir: Path, data_hash: str | None) -> tuple[Path | None, list[Path], list[str]]:
    """(checkpoint to resume from, airo's interrupted saves to remove, notes), checked against
    this command's options, data, identity (base model, tokenizer, plugins) and, when
    ``--max_steps`` gives it, length, before any model loads. An explicit
    ``--resume_from_checkpoint`` may cross an identity change: a loud warning lists it."""
    explicit = config.training.get("resume_from_checkpoint")
    if explicit:
        resume, incomplete, notes = Path(explicit), [], check_explicit_resume(explicit)
    else:
        resume, incomplete = find_resume_checkpoint(working_dir)
        notes = []
    if resume is not None:
        check_resume_options(resume, config)
        check_resume_data(resume, content_hash=data_hash)
        marker = read_marker(resume) or {}
        identity = run_identity(config) if rank() == 0 and isinstance(marker.get("identity"), dict) else None
        crossed = check_resume_identity(resume, identity, explicit=bool(explicit))
        if crossed:
            lines = [f"WARNING: --resume_from_checkpoint {resume} was trained with another base model, tokenizer "
                     "or plugin than this command's:", *(f"WARNING:   - {c}" for c in crossed),
                     "WARNING: resuming anyway, as asked: the result mixes two trainings and is neither of them."]
            say("!" * 78)
            for line in lines:
                say(line)
            say("!" * 78)
            notes.append(f"resumed across changes to what {resume} was trained with: {'; '.join(crossed)}")
        new_total = config.training.get("max_steps")
        if isinstance(new_total, int) and new_total > 0:  # the length is known before the data: check it now
            check_resume_length(resume, schedule_args(config), new_total)
    return resume, incomplete, notes


def resumed_step(resume: Path | None) -> int:
    if resume is None:
        return 0
    step = (read_marker(resume) or {}).get("global_step")
    if step is None:  # an explicit --resume_from_checkpoint another tool wrote (checked readable)
        step = json.loads((resume / "trainer_state.json").read_text(encoding="utf-8")).get("global_step")
    return int(step or 0)


def data_record(data_hash: str | None, config: TrainConfig, prepared, args) -> dict[str, Any]:
    # the processes share out the batches (and packed rows are split for them): another count
    # would resume at another place in the data
    return {"dataset": config.data.dataset, "content_hash": data_hash, "train_examples": len(prepared.train),
            "eval_examples": len(prepared.eval) if prepared.eval is not None else 0,
            "processes": max(1, args.world_size)}


def check_prepared(config: TrainConfig, prepared, args, resume: Path | None) -> dict[str, Any]:
    """The data's record for checkpoints, checked against the resumed checkpoint's example
    counts; no training example left is an error. Both before the model loads."""
    if len(prepared.train) == 0:
        raise AiroError("no training examples left after preparing the data; see the data report")
    record = data_record(prepared.data_fingerprint, config, prepared, args)
    if resume is not None:
        check_resume_data(resume, content_hash=record["content_hash"], train_examples=record["train_examples"],
                          eval_examples=record["eval_examples"], processes=record["processes"])
    return record
