"""The training run: its stages over one :class:`~airo.core.training.run.Run` (DDP /
DeepSpeed behind one seam, :mod:`.distributed`), then the post-training actions.

:func:`run_training` calls the stages of :data:`airo.core.training.recipe.STAGES` in turn,
each a function of the Run that the ones before it filled in (callable alone in a test):

1. ``plan``: the loader and the actions are chosen (a misspelt name fails here); the
   folders are checked (:mod:`.folders`): apart from each other and from every input
   (dataset, base model, config files, the current directory), and airo's to write: new,
   empty or stamped by airo with the kind being written, never a link or a user's folder;
   every output folder is probed for writability;
2. ``lock_folders``: the working dir and the folders the actions write are locked
   (:mod:`airo.core.lock`): a second run on them, or on a folder inside or around them,
   fails at once, naming the holder;
3. ``check_finished``: a readable ``working_dir/completed`` means the run already
   finished: the same command says so and stops here; a changed one is an error saying
   what differs;
4. ``find_resume_point``: the resume checkpoint (:mod:`.checkpoints`, :mod:`.resume`): the
   newest *complete* one, or ``--resume_from_checkpoint``; its options, identity
   (:mod:`airo.core.identity`: base weights, tokenizer, plugins) and length
   (:mod:`.schedule`) must fit this command's, else a ConfigError says what changed;
5. ``preflight``: the model path, dataset, format, template and option paths; the free
   space of every output folder;
6. ``training_arguments``: ``TrainingArguments`` (:mod:`.arguments`), which set up the
   process group, and the distributed backend (:mod:`.distributed`: DDP or DeepSpeed);
   then a barrier: past it every rank has checked the folders;
7. ``claim_folders``: only then is the working dir created and stamped (rank 0): no rank
   checks a folder that rank 0 is still creating;
8. ``load_tokenizer``: the tokenizer, all the data needs;
9. ``prepare_data``: tokenized train/eval datasets, the data hashed as read (checked
   against the resumed checkpoint's, with its example counts), all before the model loads;
10. ``load_model``: the model loader plugin returns the model (and the same tokenizer);
11. ``build_trainer``: the rows, collator and Trainer class for the objective, and the
    Trainer with airo's callbacks and the plugins' evaluation loop;
12. ``announce``: the run summary (rank 0); interrupted saves are removed;
13. ``train``: ``Trainer.train`` under the NaN/inf guard (:mod:`.loop`);
14. ``gather_weights``: the whole model's weights when the backend shards them (ZeRO-3);
15. ``run_actions``: post-training actions (save, merge, export, third-party ones) on
    rank 0, in ``order``;
16. ``record_completion``: ``working_dir/completed`` (JSON: final step, outputs, options,
    data, identity).

The final step is always checkpointed (once, whatever ``--save_strategy``), so a failing
post-training action never costs the training: re-running the command resumes at the
last step, trains nothing and redoes the actions. With ``--save_strategy no`` that final
checkpoint is deleted again once the actions succeeded and ``completed`` is written.

Modules, one job each: :mod:`.recipe` (the stages above), :mod:`.run` (the Run they share),
:mod:`.arguments` (``TrainingArguments``), :mod:`.distributed` (DDP / DeepSpeed: prepare,
placement, full state dict, checkpoint formats, summary), :mod:`.callbacks` (checkpoint
stamps and markers, tokens/s), :mod:`.checkpoints` (completeness, resume checks, rotation),
:mod:`.resume` (finished run, resume point), :mod:`.schedule` (the learning-rate schedule
of a resumed run of another length), :mod:`.loop` (``Trainer.train`` under the guards),
:mod:`.folders` (output folders checked, probed), :mod:`.summary` (run summary, training
record), :mod:`.context` (what actions receive), :mod:`.metrics` (metrics.jsonl, loss.png),
:mod:`.evaluation` (the plugins' evaluations and callbacks in the loop), :mod:`.dist`
(rank, barrier).
"""

from __future__ import annotations

_EXPORTS = {
    "CHECKPOINT_MARKER": "checkpoints", "COMPLETED_FILE": "checkpoints", "RESUMABLE_CHANGES": "checkpoints",
    "check_resume_options": "checkpoints", "find_resume_checkpoint": "checkpoints", "read_completed": "checkpoints",
    "rotate_checkpoints": "checkpoints", "DATA_REPORT_FILE": "context", "TRAINING_INFO_FILE": "context",
    "TrainContext": "context", "TrainResult": "context", "check_folders": "folders",
    "output_holds_working_dir": "folders", "run_training": "recipe", "select_actions": "recipe",
    "select_loader": "recipe",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Imported on first use: a plugin that needs one small module (say .metrics) must not pull
    # in the whole recipe, and `airo --help` imports plugins.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
