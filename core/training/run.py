"""What a run knows as it goes: one :class:`Run` object, filled in by the recipe's stages
(:data:`airo.core.training.recipe.STAGES`), each stage reading what the ones before it set."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..config import TrainConfig
from .dist import rank


class TrainingData(NamedTuple):
    """What the objective makes of the prepared train split for the Trainer."""

    train_dataset: Any  # the rows trained on (packed rows with --sample_packing)
    collator: Any
    trainer_cls: type  # the Trainer class to build (a subclass for packing or another objective's loss)
    packing: Any = None  # PackingStats with --sample_packing, else None


@dataclass
class Run:
    """The state of one run. ``main`` (rank 0) is decided once, when the run starts."""

    config: TrainConfig
    main: bool
    working_dir: Path
    locks: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # the folder locks, held to the end
    created: list[Path] = field(default_factory=list)  # folders this run created (claim_folders), outermost first
    # plan
    loader: Any = None
    actions: list = field(default_factory=list)
    outputs: list = field(default_factory=list)  # the ActionOutputs the actions declared
    space_needed: list = field(default_factory=list)
    # check_finished: set when there is nothing to train; the stages after it do not run
    stopped: bool = False
    # find_resume_point
    resume: Path | None = None
    incomplete: list[Path] = field(default_factory=list)  # airo's interrupted saves, removed before training
    resume_notes: list[str] = field(default_factory=list)
    # training_arguments
    args: Any = None
    distributed: Any = None  # the Backend of airo.core.training.distributed
    # load_tokenizer, prepare_data
    tokenizer: Any = None
    prepared: Any = None
    data_record: dict[str, Any] = field(default_factory=dict)  # the data as checkpoints record it
    # load_model
    loaded: Any = None  # the loader's LoadedModel
    # build_trainer
    data: TrainingData | None = None
    steps: int = 0
    start_step: int = 0
    trainer: Any = None
    marker: Any = None  # the checkpoint-marker callback (holds the run's identity)
    plugin_loop: Any = None
    # train, gather_weights
    metrics: dict[str, Any] = field(default_factory=dict)
    state_dict: dict | None = None
    # run_actions
    result: Any = None  # the TrainResult

    @classmethod
    def start(cls, config: TrainConfig, locks: contextlib.ExitStack | None = None) -> Run:
        return cls(config=config, main=rank() == 0, working_dir=Path(config.working_dir),
                   locks=locks if locks is not None else contextlib.ExitStack())
