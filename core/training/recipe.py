"""The run, as its stages: :data:`STAGES`, in order, each a function of the one :class:`Run`
(:mod:`airo.core.training.run`) that the stages before it filled in. :func:`run_training`
calls them in turn; a test or a tool may call one alone on a Run set up as the stages
before it would leave it. The docs (:mod:`airo.core.training`, CONTRIBUTING's diagram)
list the same stages in the same order (``tests/test_recipe_stages.py`` checks it)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ..atomic import remove_owned, write_json
from ..config import TrainConfig
from ..errors import ConfigError
from ..fingerprint import dataset_content_hash
from ..identity import run_identity
from ..lock import folder_locks
from ..model_output import select_loader  # noqa: F401 - the recipe chooses the loader with it (and exports it)
from ..preflight import preflight as check_inputs
from ..tokenizer import load_tokenizer as read_tokenizer
from ..types import ActionOutput
from .arguments import disable_eval, planned_steps, reports_to, resolve_optim, training_overrides
from .callbacks import trainer_callbacks
from .checkpoints import CHECKPOINT_MARKER, COMPLETED_FILE, is_complete, options_snapshot
from .context import TrainContext, TrainResult
from .dist import barrier, say
from .folders import outermost_missing, remove_unused_folders
from .distributed import backend
from .evaluation import install as install_plugin_loop
from .folders import (check_folders, check_space, needed_space, output_holds_working_dir, output_name,
                      probe_writable)
from .loop import fit
from .memory import release_build_memory
from .metrics import metrics_callback
from .resume import check_prepared, finished_result, resume_point, resumed_step
from .run import Run, TrainingData
from .summary import last_logged_loss, plain, summary_lines, training_info


def select_actions(config: TrainConfig, registry=None) -> list:
    """The post-training actions to run (``--post_train_actions``: ``auto``, ``none``, a comma
    list, or ``auto,NAME``), in ``order``."""
    if registry is None:
        from ..plugins import get_registry

        registry = get_registry()
    chosen = registry.select("actions", config.run.post_train_actions, config, option="--post_train_actions")
    return sorted(chosen, key=lambda a: (a.order, a.name))


def declared_outputs(config: TrainConfig, actions) -> list[ActionOutput]:
    """The folders the chosen post-training actions say they write."""
    return [output for action in actions if action.outputs is not None for output in action.outputs(config)]


def _require(config: TrainConfig) -> None:
    for option, value in (("--output_dir", config.run.output_dir),
                          ("--model_name_or_path", config.model.model_name_or_path),
                          ("--dataset", config.data.dataset)):
        if not value:
            raise ConfigError(f"{option} is required")


def _run_locks(config: TrainConfig, outputs: list[ActionOutput], main: bool):
    """Exclusive locks on the run's folders, held by the main process for the whole run."""
    if not main:
        return contextlib.nullcontext()
    named = [("working dir", config.working_dir), *((output_name(o), o.path) for o in outputs)]
    if output_holds_working_dir(config):
        named.append(("output dir", config.run.output_dir))
    return folder_locks(named)


def _prepare(config: TrainConfig, tokenizer, args, main: bool):
    """The tokenized datasets: built by the main process first, the others read its cache."""
    from ..objectives import prepare  # the --objective's data: sft's is the conversation pipeline

    # local=False: global rank 0 builds it while every other rank, on every node, waits; a shared
    # cache is then read by all, a node-local one is built by each node after it
    with args.main_process_first(local=False, desc="preparing the dataset"):
        return prepare(config, tokenizer, rejects_dir=config.working_dir if main else None)


_resume_point = resume_point  # its name here before the stages (tests import it from this module)


# -- the stages, in order ------------------------------------------------------------------------

def plan(run: Run) -> None:
    """The loader and the actions are chosen (a misspelt name fails here); the folders they
    write are checked apart and airo's to write, and probed for writability."""
    config = run.config
    _require(config)
    run.loader = select_loader(config)
    run.actions = select_actions(config)
    run.outputs = declared_outputs(config, run.actions)
    check_folders(config, run.outputs)
    run.space_needed = needed_space(config, run.outputs)
    for what, folder, _ in run.space_needed:
        probe_writable(folder, what)


def lock_folders(run: Run) -> None:
    """The working dir and the actions' folders are locked for the rest of the run (rank 0)."""
    run.locks.enter_context(_run_locks(run.config, run.outputs, run.main))


def check_finished(run: Run) -> None:
    """A readable ``completed`` means the run finished: the same command stops here with its
    result. Nothing loads; the data is only hashed to say whether it changed."""
    run.result = finished_result(run.config, run.working_dir, dataset_content_hash(run.config.data.dataset), run.main)
    run.stopped = run.result is not None


def find_resume_point(run: Run) -> None:
    """The checkpoint to resume and its options, identity and length (folder checks, before
    anything is read; its data is checked against the data as read, in :func:`prepare_data`)."""
    run.resume, run.incomplete, run.resume_notes = resume_point(run.config, run.working_dir, None)


def preflight(run: Run) -> None:
    """The model path, the dataset, format and template, option paths; the free space."""
    check_inputs(run.config)
    check_space(run.space_needed)


def training_arguments(run: Run) -> None:
    """``TrainingArguments`` (which set up the process group), and the distributed backend;
    then every rank waits for the others (forming the group does not wait): past here every
    rank has checked the folders, and only then does rank 0 create them."""
    run.distributed = backend(run.config.training)
    run.distributed.announce_builds(main=run.main)  # before TrainingArguments, which may start the build
    run.args = run.config.training_arguments(**training_overrides(run.config))
    run.distributed.prepare()
    barrier()


def claim_folders(run: Run) -> None:
    """The working dir (and the output dir holding it) is created and stamped (rank 0), once
    every rank has checked it: no rank checks a folder rank 0 is still creating."""
    if run.main:
        from .folders import claim_run_folders

        claim_run_folders(run.config)


def load_tokenizer(run: Run) -> None:
    """The tokenizer: all the data needs, before the model loads."""
    run.tokenizer = read_tokenizer(run.config)


def prepare_data(run: Run) -> None:
    """Read, check, count and tokenize the data, before the model loads (a data mistake costs
    seconds); its record is checked against the resumed checkpoint's."""
    config = run.config
    run.prepared = _prepare(config, run.tokenizer, run.args, run.main)
    if reports_to(config, "wandb"):
        os.environ.setdefault("WANDB_DIR", str(run.working_dir))
    for message in config.warnings:
        say(f"warning: {message}", main=run.main)
    run.data_record = check_prepared(config, run.prepared, run.args, run.resume)


def load_model(run: Run) -> None:
    """The loader plugin's model (seeded first: LoRA's init is reproducible). A loader that
    returns another tokenizer gets the data prepared again with it."""
    from transformers import set_seed

    from ..data.cache import tokenizer_fingerprint

    set_seed(run.args.seed)
    run.loaded = loaded = run.loader.load(run.config)
    if loaded.tokenizer is not run.tokenizer \
            and tokenizer_fingerprint(loaded.tokenizer) != tokenizer_fingerprint(run.tokenizer):
        say(f"note: the {run.loader.name} loader returned another tokenizer than --model_name_or_path's; "
            "preparing the data with it", main=run.main)
        run.tokenizer = loaded.tokenizer
        run.prepared = _prepare(run.config, run.tokenizer, run.args, run.main)
        run.data_record = check_prepared(run.config, run.prepared, run.args, run.resume)
    optim = resolve_optim(run.config, loaded)
    if optim is not None:
        from transformers.training_args import OptimizerNames

        run.args.optim = OptimizerNames(optim)


def build_trainer(run: Run) -> None:
    """The objective's rows, collator and Trainer class; the Trainer with airo's callbacks
    (checkpoint markers, metrics, tokens/s) and the plugins' evaluation loop."""
    from transformers import Trainer
    from transformers.trainer_callback import ProgressCallback

    config, args, prepared = run.config, run.args, run.prepared
    if prepared.eval is None or len(prepared.eval) == 0:
        if args.eval_strategy != "no":
            say("no eval split (--eval_dataset_size 0 or too little data): evaluation is off", main=run.main)
        disable_eval(args)
        eval_dataset = None
    else:
        eval_dataset = prepared.eval
    from ..objectives import training_data  # the --objective's rows, collator and loss

    run.data = TrainingData(*training_data(config, prepared.train, run.tokenizer, run.loaded.model, args, Trainer))
    _chunk_the_loss(run)
    release_build_memory()  # the datasets (and packed rows) are written: the run only reads them now
    run.steps, _ = planned_steps(len(run.data.train_dataset), args)  # packed: rows, not examples
    _log_short_runs(run)
    run.start_step = resumed_step(run.resume)
    CheckpointMarker, Progress = trainer_callbacks()
    run.marker = CheckpointMarker(options=options_snapshot(config), data=run.data_record,
                                  save_total_limit=config.training.get("save_total_limit"),
                                  identity=run_identity(config, run.loader) if run.main else None)
    metrics_log = metrics_callback(run.working_dir, resumed_step=run.start_step if run.resume is not None else None)
    metrics_log.plot_to = run.working_dir  # loss.png, refreshed at each checkpoint; the save action copies it
    run.trainer = run.data.trainer_cls(model=run.loaded.model, args=args, train_dataset=run.data.train_dataset,
                                       eval_dataset=eval_dataset, data_collator=run.data.collator,
                                       processing_class=run.tokenizer, callbacks=[run.marker, metrics_log])
    if run.trainer.pop_callback(ProgressCallback) is not None:  # ours prints numbers and tokens/s
        run.trainer.add_callback(Progress())
    run.plugin_loop = install_plugin_loop(run.trainer, config, prepared.template, str(run.working_dir),
                                          is_main_process=run.main)


def _log_short_runs(run: Run) -> None:
    """The seed's default --logging_steps 10 logged no training loss at all in a 9-step run (a
    loss curve of one point, a model card without a final loss): unless the user chose the
    interval, a run logs at least ten times, or at every step when it is shorter."""
    args = run.args
    if "logging_steps" in run.config.explicit or not run.steps or args.logging_steps < 1:
        return  # the user's interval, or transformers' ratio of the run
    if run.steps < 10 * args.logging_steps:
        args.logging_steps = max(1, run.steps // 10)


def _chunk_the_loss(run: Run) -> None:
    """An objective whose loss is the model's causal LM loss on the labels (it says so with
    ``causal_lm_loss = True``) gets it computed in chunks, without the full-vocabulary logits,
    where that is exact for the model (``--chunked_loss``)."""
    from ..objectives import select_objective
    from .chunked_loss import with_chunked_loss

    if not getattr(select_objective(run.config).objective, "causal_lm_loss", False):
        return
    trainer_cls, note = with_chunked_loss(run.config.run.chunked_loss, run.data.trainer_cls, run.loaded.model)
    run.data = run.data._replace(trainer_cls=trainer_cls)
    if note:
        run.resume_notes.append(note)  # printed under the run summary


def announce(run: Run) -> None:
    """The run summary and the data report (rank 0); airo's interrupted saves are removed."""
    if run.main:
        for line in summary_lines(run.config, run.loader.name, run.loaded, run.prepared, run.args, run.steps,
                                  run.resume, run.outputs, packing=run.data.packing):
            say(line)
        for note in run.resume_notes:
            say(f"  note: {note}")
        for line in run.prepared.report.summary_lines():
            say(line)
        if run.incomplete:
            say("removing incomplete checkpoint(s) left by an interrupted save: "
                + ", ".join(p.name for p in run.incomplete))
    barrier()
    if run.main:
        for path in run.incomplete:
            remove_owned(path, what="checkpoint")
    barrier()


def train(run: Run) -> None:
    """``Trainer.train`` under the NaN/inf guard (:func:`airo.core.training.loop.fit`)."""
    if run.resume is not None:
        say(f"resuming from {run.resume} (step {run.start_step} of {run.steps})", main=run.main)
    run.metrics = fit(run.trainer, run.resume, run.start_step, run.main)
    run.metrics.update(run.plugin_loop.metrics())  # the plugins' evaluations, last round: kept in `completed`


def gather_weights(run: Run) -> None:
    """The whole model's weights when the backend shards them (ZeRO-3), gathered on every
    rank before rank 0 saves; None otherwise."""
    run.state_dict = run.distributed.full_state_dict(run.trainer)


def run_actions(run: Run) -> None:
    """The post-training actions (save, merge, ...) on rank 0, in ``order``; the result."""
    trainer, loaded = run.trainer, run.loaded
    output_dir = str(run.config.run.output_dir)
    run.result = result = TrainResult(
        output_dir=output_dir, working_dir=str(run.working_dir), global_step=trainer.state.global_step,
        metrics=run.metrics, resumed_from=str(run.resume) if run.resume is not None else None,
        actions=[a.name for a in run.actions], is_main_process=run.main,
        final_loss=last_logged_loss(trainer.state.log_history, run.metrics))
    result.notes += run.plugin_loop.summary_lines()
    if not run.main:
        return
    ctx = TrainContext(config=run.config, model=trainer.model if loaded.is_peft else _unwrap(trainer),
                       tokenizer=run.tokenizer, template=run.prepared.template, output_dir=output_dir,
                       working_dir=str(run.working_dir), adapter_dir=output_dir if loaded.is_peft else None,
                       is_main_process=True, trainer=trainer, report=run.prepared.report, loaded=loaded,
                       state_dict=run.state_dict,
                       info=training_info(run.config, loaded, run.prepared, run.loader.name, run.args))
    ctx.info["global_step"] = trainer.state.global_step
    ctx.info["data"] = run.data_record
    for action in run.actions:
        say(f"post-training action: {action.name}")
        action.run(ctx)
    result.outputs = dict(ctx.outputs)


def record_completion(run: Run) -> None:
    """``working_dir/completed`` (rank 0): the final step, outputs, options, data, identity.
    With ``--save_strategy no`` the final checkpoint, kept in case an action failed, goes."""
    if not run.main:
        # No barrier: the other ranks may exit while rank 0 saves and merges (which can take
        # longer than the collective timeout for a big model).
        return
    result, step = run.result, run.trainer.state.global_step
    write_json(run.working_dir / COMPLETED_FILE, {
        "global_step": step, "output_dir": result.output_dir, "outputs": result.outputs,
        "actions": result.actions, "metrics": run.metrics, "final_loss": result.final_loss,
        "resumed_from": result.resumed_from, "config": options_snapshot(run.config), "data": run.data_record,
        "identity": run.marker.identity, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if plain(run.args.save_strategy) == "no":
        final = run.working_dir / f"checkpoint-{step}"
        if is_complete(final):
            (final / CHECKPOINT_MARKER).unlink(missing_ok=True)
            left = remove_owned(final, what="checkpoint")
            if left:
                say(f"kept {final}: it holds files airo did not write ({', '.join(left)})")


STAGES = (plan, lock_folders, check_finished, find_resume_point, preflight, training_arguments, claim_folders,
          load_tokenizer, prepare_data, load_model, build_trainer, announce, train, gather_weights, run_actions,
          record_completion)


def run_training(config: TrainConfig) -> TrainResult:
    """Train as configured, resume when possible, then run the post-training actions: the
    :data:`STAGES` in order, until one stops the run (a finished run trains nothing)."""
    run = None
    try:
        with contextlib.ExitStack() as locks:
            run = Run.start(config, locks)
            for folder in (config.run.output_dir, config.working_dir):  # before any stage creates one
                missing = outermost_missing(Path(folder)) if folder else None
                if missing is not None and missing not in run.created:
                    run.created.append(missing)
            for stage in STAGES:
                stage(run)
                if run.stopped:
                    break
            return run.result
    except BaseException:
        if run is not None and run.trainer is None and run.main:  # nothing was trained: nothing to keep
            remove_unused_folders(run.created)  # after the locks are released: their files sit beside the folders
        raise


def _unwrap(trainer):
    try:
        return trainer.accelerator.unwrap_model(trainer.model)
    except Exception:  # noqa: BLE001
        return trainer.model
