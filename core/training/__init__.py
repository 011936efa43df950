"""The training run: folders -> resume checks -> data -> loader -> HF Trainer (DDP /
DeepSpeed) -> post-training actions.

Read top to bottom, :func:`run_training` is the whole recipe:

1. the loader and the actions are chosen (a misspelt name fails here);
2. the folders are checked (:mod:`airo.core.training.folders`): apart from each other and from
   every input (dataset, base model, config files, the current directory), and airo's to
   write: new, empty or stamped by airo with the kind being written, never a link or a
   user's folder;
3. every output folder is probed for writability; then the working dir and the folders
   the actions write are locked (:mod:`airo.core.lock`): a second run on them, or on a
   folder inside or around them, fails at once, naming the holder;
4. a readable ``working_dir/completed`` means the run already finished: the same command
   says so and returns; a changed one is an error saying what differs;
5. the resume checkpoint (:mod:`airo.core.training.checkpoints`): the newest *complete* one, or
   ``--resume_from_checkpoint``; its options, identity (:mod:`airo.core.identity`: base
   weights, tokenizer, plugins) and length must fit this command's, else a ConfigError
   says what changed;
6. preflight, the free space of every output folder; the working dir is created and
   stamped;
7. the tokenizer, then the data pipeline: tokenized train/eval datasets, the data hashed
   as read (checked against the resumed checkpoint's, with its example counts), all
   before the model loads;
8. the model loader plugin returns the model (and the same tokenizer);
9. the run summary (rank 0), then ``Trainer.train`` under the NaN/inf guard;
10. post-training actions (save, merge, export, third-party ones) on rank 0, in ``order``;
11. ``working_dir/completed`` (JSON: final step, outputs, options, data, identity).

The final step is always checkpointed (once, whatever ``--save_strategy``), so a failing
post-training action never costs the training: re-running the command resumes at the
last step, trains nothing and redoes the actions. With ``--save_strategy no`` that final
checkpoint is deleted again once the actions succeeded and ``completed`` is written.

Modules, one job each: :mod:`.recipe` (the steps above), :mod:`.arguments`
(``TrainingArguments``), :mod:`.callbacks` (checkpoint stamps and markers, tokens/s),
:mod:`.checkpoints` (completeness, resume checks, rotation), :mod:`.folders` (output
folders checked, probed), :mod:`.summary` (run summary, training record), :mod:`.context`
(what actions receive), :mod:`.metrics` (metrics.jsonl, loss.png), :mod:`.evaluation`
(the plugins' evaluations and callbacks in the loop), :mod:`.dist` (rank, barrier).
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
