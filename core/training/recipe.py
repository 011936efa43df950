"""The run, top to bottom (see :mod:`airo.core.training` for the steps)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

from ..atomic import remove_owned, write_json
from ..config import TrainConfig
from ..errors import AiroError, ConfigError
from ..fingerprint import dataset_content_hash
from ..identity import identity_changes, run_identity
from ..plugins import describe_exception
from ..lock import folder_locks
from ..preflight import preflight
from ..tokenizer import load_tokenizer
from ..types import ActionOutput
from .arguments import (disable_eval, init_deepspeed_comm, planned_steps, reports_to, resolve_optim,
                        training_overrides)
from .callbacks import FiniteGuard, NothingLeftToTrain, diverged, nonfinite_weights, trainer_callbacks
from .checkpoints import (CHECKPOINT_MARKER, COMPLETED_FILE, changed_options, check_explicit_resume, check_resume_data,
                          check_resume_identity, check_resume_length, check_resume_options, data_changes,
                          find_resume_checkpoint, is_complete, list_checkpoints, options_snapshot, read_completed,
                          read_marker, schedule_args)
from .context import TrainContext, TrainResult
from .dist import barrier, rank, say
from .evaluation import install as install_plugin_loop
from .memory import release_build_memory
from .metrics import metrics_callback
from .folders import (check_folders, check_space, needed_space, output_holds_working_dir, output_name,
                      probe_writable)
from .summary import last_logged_loss, plain, summary_lines, training_info


def select_loader(config: TrainConfig):
    """``--loader NAME``, or with ``auto`` the one loader whose ``auto(config)`` says it applies."""
    from ..plugins import get_registry

    registry = get_registry()
    if config.model.loader != "auto":
        return registry.get("loaders", config.model.loader)
    applies = [loader for loader in registry.loaders.values() if loader.auto is not None and loader.auto(config)]
    if len(applies) == 1:
        return applies[0]
    known = ", ".join(sorted(registry.loaders)) or "none (is a loader plugin installed?)"
    if not applies:
        raise ConfigError(f"no model loader applies to this config; pass --loader NAME. Loaders: {known}")
    raise ConfigError(f"several model loaders apply to this config ({', '.join(sorted(a.name for a in applies))}); "
                      "pass --loader NAME")


def select_actions(config: TrainConfig, registry=None) -> list:
    """The post-training actions to run (``--post_train_actions``: ``auto``, ``none``, a comma
    list, or ``auto,NAME``), in ``order``."""
    if registry is None:
        from ..plugins import get_registry

        registry = get_registry()
    chosen = registry.select("actions", config.run.post_train_actions, config, option="--post_train_actions")
    return sorted(chosen, key=lambda a: (a.order, a.name))


# -- the recipe ----------------------------------------------------------------------------------

def _require(config: TrainConfig) -> None:
    for option, value in (("--output_dir", config.run.output_dir),
                          ("--model_name_or_path", config.model.model_name_or_path),
                          ("--dataset", config.data.dataset)):
        if not value:
            raise ConfigError(f"{option} is required")


def declared_outputs(config: TrainConfig, actions) -> list[ActionOutput]:
    """The folders the chosen post-training actions say they write."""
    return [output for action in actions if action.outputs is not None for output in action.outputs(config)]


def _run_locks(config: TrainConfig, outputs: list[ActionOutput], main: bool):
    """Exclusive locks on the run's folders, held by the main process for the whole run."""
    if not main:
        return contextlib.nullcontext()
    named = [("working dir", config.working_dir), *((output_name(o), o.path) for o in outputs)]
    if output_holds_working_dir(config):
        named.append(("output dir", config.run.output_dir))
    return folder_locks(named)


def _already_complete(config: TrainConfig, working_dir: Path, data_hash: str | None, main: bool) -> TrainResult | None:
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
        if options and length_only and len(changes) == 1 and _last_complete(working_dir) is not None:
            hint = (f"; to extend the finished run instead, remove {marker}: the re-run resumes from "
                    f"{_last_complete(working_dir).name} when the learning-rate schedule allows another length")
        raise ConfigError(
            f"the run in {working_dir} is already complete (step {done['global_step']}, {marker}) and this command "
            f"differs from it: {'; '.join(changes)}. Nothing was trained and its outputs are as they were. To train "
            f"with this command, use a new --working_dir (or remove {working_dir}){hint}")
    return TrainResult(output_dir=config.run.output_dir, working_dir=str(working_dir), global_step=done["global_step"],
                       metrics=done.get("metrics", {}), final_loss=done.get("final_loss"), already_complete=True,
                       outputs=done.get("outputs", {}), actions=done.get("actions", []), is_main_process=main)


def _last_complete(working_dir: Path) -> Path | None:
    complete = [p for _, p in list_checkpoints(working_dir) if is_complete(p)]
    return complete[-1] if complete else None


def _resume_point(config: TrainConfig, working_dir: Path, data_hash: str | None) -> tuple[Path | None, list[Path], list[str]]:
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


def _claim_folders(config: TrainConfig) -> None:
    """Create and stamp the working dir (and the output dir when it holds the working dir),
    with their kinds; stamps from now on name this run."""
    from .folders import claim_run_folders

    claim_run_folders(config)


def _data_record(data_hash: str | None, config: TrainConfig, prepared, args) -> dict[str, Any]:
    # the processes share out the batches (and packed rows are split for them): another count
    # would resume at another place in the data
    return {"dataset": config.data.dataset, "content_hash": data_hash, "train_examples": len(prepared.train),
            "eval_examples": len(prepared.eval) if prepared.eval is not None else 0,
            "processes": max(1, args.world_size)}


def _resumed_step(resume: Path | None) -> int:
    if resume is None:
        return 0
    step = (read_marker(resume) or {}).get("global_step")
    if step is None:  # an explicit --resume_from_checkpoint another tool wrote (checked readable)
        step = json.loads((resume / "trainer_state.json").read_text(encoding="utf-8")).get("global_step")
    return int(step or 0)


def _train(trainer, resume: Path | None, start_step: int, main: bool) -> dict[str, Any]:
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
        raise _write_failed(trainer, exc) from exc
    bad = nonfinite_weights(trainer.model)
    if bad is not None:
        raise diverged(trainer.args, trainer.state.global_step, f"the trainable weights are not finite ({bad})")
    if trainer.state.global_step <= start_step:
        # nothing was trained in this call (resumed at the last step): the Trainer reports a
        # train_loss of 0.0, which says nothing about the run
        metrics.pop("train_loss", None)
    return metrics


def _write_failed(trainer, exc: OSError) -> AiroError:
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
    last = _last_complete(working_dir)
    space = "free some space, then " if exc.errno == errno.ENOSPC else ""
    if last is not None:
        then = f"{last.name} is complete: {space}re-run the same command to resume from it"
    else:
        then = f"no checkpoint is complete yet: {space}re-running the same command trains from the start"
    return AiroError(f"{what}; {then} (checkpoints in {working_dir})")


def run_training(config: TrainConfig) -> TrainResult:
    """Train as configured, resume when possible, then run the post-training actions."""
    _require(config)
    main = rank() == 0
    working_dir = Path(config.working_dir)
    loader = select_loader(config)
    actions = select_actions(config)  # fail on a misspelt action before training
    outputs = declared_outputs(config, actions)
    check_folders(config, outputs)
    space_needed = needed_space(config, outputs)
    for what, folder, _ in space_needed:
        probe_writable(folder, what)
    with _run_locks(config, outputs, main):
        # A finished run trains nothing: nothing loads, and the data is only hashed to say
        # whether it changed. Nothing is trained on it, so a separate hashing pass is enough.
        done = _already_complete(config, working_dir, dataset_content_hash(config.data.dataset), main)
        if done is not None:
            return done
        # the checkpoint to resume and its options: folder checks, before anything is read;
        # its data is checked against the data as read, below
        resume, incomplete, resume_notes = _resume_point(config, working_dir, None)
        preflight(config)  # the model path, the dataset, format and template: before anything loads
        check_space(space_needed)
        if main:
            _claim_folders(config)
        args = _training_arguments(config)
        # The data is read, checked, counted and tokenized before the model loads: a data
        # mistake costs seconds, not a model load. Only the tokenizer is needed for it.
        tokenizer = load_tokenizer(config)
        prepared = _prepare(config, tokenizer, args, main)
        return _train_and_finish(config, loader, actions, outputs, resume, incomplete, resume_notes, args,
                                 tokenizer, prepared)


def _training_arguments(config: TrainConfig):
    """``TrainingArguments`` for the run; initialises the process group (and DeepSpeed's)."""
    args = config.training_arguments(**training_overrides(config))
    if args.deepspeed:
        init_deepspeed_comm()
    return args


def _prepare(config: TrainConfig, tokenizer, args, main: bool):
    """The tokenized datasets: built by the main process first, the others read its cache."""
    from ..objectives import prepare  # the --objective's data: sft's is the conversation pipeline

    with args.main_process_first(desc="preparing the dataset"):
        return prepare(config, tokenizer, rejects_dir=config.working_dir if main else None)


def _check_prepared(config: TrainConfig, prepared, args, resume: Path | None) -> dict[str, Any]:
    """The data's record for checkpoints, checked against the resumed checkpoint's example
    counts; no training example left is an error. Both before the model loads."""
    if len(prepared.train) == 0:
        raise AiroError("no training examples left after preparing the data; see the data report")
    data_record = _data_record(prepared.data_fingerprint, config, prepared, args)
    if resume is not None:
        check_resume_data(resume, content_hash=data_record["content_hash"],
                          train_examples=data_record["train_examples"],
                          eval_examples=data_record["eval_examples"], processes=data_record["processes"])
    return data_record


def _train_and_finish(config: TrainConfig, loader, actions, outputs: list[ActionOutput], resume: Path | None,
                      incomplete: list[Path], resume_notes: list[str], args, tokenizer, prepared) -> TrainResult:
    from transformers import Trainer, set_seed
    from transformers.trainer_callback import ProgressCallback

    from ..data.cache import tokenizer_fingerprint

    working_dir = Path(config.working_dir)
    action_names = [a.name for a in actions]
    if reports_to(config, "wandb"):
        os.environ.setdefault("WANDB_DIR", str(working_dir))

    main = args.process_index == 0
    for message in config.warnings:
        say(f"warning: {message}", main=main)
    data_record = _check_prepared(config, prepared, args, resume)
    set_seed(args.seed)  # before the model: LoRA's random init must be reproducible
    loaded = loader.load(config)
    model = loaded.model
    if loaded.tokenizer is not tokenizer and tokenizer_fingerprint(loaded.tokenizer) != tokenizer_fingerprint(tokenizer):
        # a loader that builds its own tokenizer: the data must be tokenized by that one
        say(f"note: the {loader.name} loader returned another tokenizer than --model_name_or_path's; "
            "preparing the data with it", main=main)
        tokenizer = loaded.tokenizer
        prepared = _prepare(config, tokenizer, args, main)
        data_record = _check_prepared(config, prepared, args, resume)
    optim = resolve_optim(config, loaded)
    if optim is not None:
        from transformers.training_args import OptimizerNames

        args.optim = OptimizerNames(optim)

    if prepared.eval is None or len(prepared.eval) == 0:
        if args.eval_strategy != "no":
            say("no eval split (--eval_dataset_size 0 or too little data): evaluation is off", main=main)
        disable_eval(args)
        eval_dataset = None
    else:
        eval_dataset = prepared.eval
    from ..objectives import training_data  # the --objective's rows, collator and loss

    train_dataset, collator, trainer_cls, packing = training_data(config, prepared.train, tokenizer, model, args,
                                                                  Trainer)
    release_build_memory()  # the datasets (and packed rows) are written: the run only reads them now
    steps, _ = planned_steps(len(train_dataset), args)  # packed: rows, not examples

    start_step = _resumed_step(resume)
    CheckpointMarker, Progress = trainer_callbacks()
    marker = CheckpointMarker(options=options_snapshot(config), data=data_record,
                              save_total_limit=config.training.get("save_total_limit"),
                              identity=run_identity(config, loader) if main else None)
    metrics_log = metrics_callback(working_dir, resumed_step=start_step if resume is not None else None)
    metrics_log.plot_to = working_dir  # loss.png, refreshed at each checkpoint; the save action copies it
    trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                          data_collator=collator, processing_class=tokenizer,
                          callbacks=[marker, metrics_log])
    if trainer.pop_callback(ProgressCallback) is not None:  # ours prints numbers and tokens/s
        trainer.add_callback(Progress())
    plugin_loop = install_plugin_loop(trainer, config, prepared.template, str(working_dir), is_main_process=main)

    if main:
        for line in summary_lines(config, loader.name, loaded, prepared, args, steps, resume, outputs,
                                  packing=packing):
            say(line)
        for note in resume_notes:
            say(f"  note: {note}")
        for line in prepared.report.summary_lines():
            say(line)
        if incomplete:
            say("removing incomplete checkpoint(s) left by an interrupted save: "
                 + ", ".join(p.name for p in incomplete))
    barrier()
    if main:
        for path in incomplete:
            remove_owned(path, what="checkpoint")
    barrier()

    if resume is not None:
        say(f"resuming from {resume} (step {start_step} of {steps})", main=main)
    metrics = _train(trainer, resume, start_step, main)
    metrics.update(plugin_loop.metrics())  # the plugins' evaluations, last round: kept in `completed`

    # ZeRO-3 shards the weights: gather them on every rank before rank 0 saves.
    state_dict = None
    if trainer.is_deepspeed_enabled:
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and getattr(plugin, "zero_stage", 0) == 3:
            state_dict = trainer.accelerator.get_state_dict(trainer.deepspeed)

    output_dir = str(Path(config.run.output_dir))
    result = TrainResult(output_dir=output_dir, working_dir=str(working_dir),
                         global_step=trainer.state.global_step,
                         metrics=metrics, resumed_from=str(resume) if resume is not None else None,
                         actions=action_names, is_main_process=main,
                         final_loss=last_logged_loss(trainer.state.log_history, metrics))
    result.notes += plugin_loop.summary_lines()
    if main:
        ctx = TrainContext(config=config, model=trainer.model if loaded.is_peft else _unwrap(trainer),
                           tokenizer=tokenizer, template=prepared.template, output_dir=output_dir,
                           working_dir=str(working_dir), adapter_dir=output_dir if loaded.is_peft else None,
                           is_main_process=True, trainer=trainer, report=prepared.report, loaded=loaded,
                           state_dict=state_dict,
                           info=training_info(config, loaded, prepared, loader.name, args))
        ctx.info["global_step"] = trainer.state.global_step
        ctx.info["data"] = data_record
        for action in actions:
            say(f"post-training action: {action.name}")
            action.run(ctx)
        result.outputs = dict(ctx.outputs)
        write_json(working_dir / COMPLETED_FILE, {
            "global_step": trainer.state.global_step, "output_dir": output_dir,
            "outputs": result.outputs,
            "actions": result.actions, "metrics": metrics, "final_loss": result.final_loss,
            "resumed_from": result.resumed_from, "config": options_snapshot(config), "data": data_record,
            "identity": marker.identity, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if plain(args.save_strategy) == "no":
            # the final checkpoint was only kept in case an action failed; the user asked for none
            final = working_dir / f"checkpoint-{trainer.state.global_step}"
            if is_complete(final):
                (final / CHECKPOINT_MARKER).unlink(missing_ok=True)
                left = remove_owned(final, what="checkpoint")
                if left:
                    say(f"kept {final}: it holds files airo did not write ({', '.join(left)})")
    # No barrier here: the other ranks may exit while rank 0 saves and merges (which can take
    # longer than the collective timeout for a big model).
    return result


def _unwrap(trainer):
    try:
        return trainer.accelerator.unwrap_model(trainer.model)
    except Exception:  # noqa: BLE001
        return trainer.model
