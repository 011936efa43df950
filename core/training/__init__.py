"""The training run: loader -> data -> HF Trainer (DDP / DeepSpeed) -> post-training actions.

Read top to bottom, :func:`run_training` is the whole recipe:

1. the loader and the actions are chosen (a misspelt name fails here);
2. the folders are checked (:mod:`airo.core.training.folders`): apart from each other and from
   every input (dataset, base model, config files, the current directory), and airo's to
   write: new, empty or stamped by airo, never a symlink or a user's folder;
3. every output folder is probed for writability; then the working dir and the folders
   the actions write are locked (:mod:`airo.core.lock`): a second run on them fails at
   once, naming the holder;
4. a readable ``working_dir/completed`` means the run already finished: say so, return;
5. the resume checkpoint (:mod:`airo.core.training.checkpoints`): the newest *complete* one, or
   ``--resume_from_checkpoint``; its options and data (content hash) must match this
   command's, else a ConfigError says what changed;
6. the free space of every output folder is checked; the working dir is created and
   stamped;
7. the model loader plugin returns the model and the tokenizer; the data pipeline
   returns tokenized train/eval datasets (their example counts are checked against the
   resumed checkpoint's);
8. the run summary (rank 0), then ``Trainer.train``;
9. post-training actions (save, merge, third-party ones) on rank 0, in ``order``;
10. ``working_dir/completed`` (JSON: final step, outputs, options, data).

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

from .checkpoints import (CHECKPOINT_MARKER, COMPLETED_FILE, RESUMABLE_CHANGES, check_resume_options,
                          find_resume_checkpoint, read_completed, rotate_checkpoints)
from .context import DATA_REPORT_FILE, TRAINING_INFO_FILE, TrainContext, TrainResult
from .folders import check_folders, output_holds_working_dir
from .recipe import run_training, select_actions, select_loader

__all__ = [
    "CHECKPOINT_MARKER", "COMPLETED_FILE", "DATA_REPORT_FILE", "RESUMABLE_CHANGES", "TRAINING_INFO_FILE",
    "TrainContext", "TrainResult", "check_folders", "check_resume_options", "find_resume_checkpoint",
    "output_holds_working_dir", "read_completed", "rotate_checkpoints", "run_training", "select_actions",
    "select_loader",
]
