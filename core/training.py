"""The training run: loader -> data -> HF Trainer (DDP / DeepSpeed) -> post-training actions.

Read top to bottom, :func:`run_training` is the whole recipe:

1. the loader and the actions are chosen (a misspelt name fails here);
2. the folders are checked (:mod:`airo.core.folders`): apart from each other and from
   every input (dataset, base model, config files, the current directory), and airo's to
   write: new, empty or stamped by airo, never a symlink or a user's folder;
3. the working, output and merged folders are locked (:mod:`airo.core.lock`): a second
   run on them fails at once, naming the holder;
4. a readable ``working_dir/completed`` means the run already finished: say so, return;
5. the resume checkpoint (:mod:`airo.core.checkpoints`): the newest *complete* one, or
   ``--resume_from_checkpoint``; its options and data (content hash) must match this
   command's, else a ConfigError says what changed;
6. every output folder is probed for writability and free space; the working dir is
   created and stamped;
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

:func:`merge_adapter` is the one merge implementation, used by ``airo merge`` and by the
``merge`` action.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .atomic import atomic_directory, check_replaceable, claim_folder, fsync_tree, is_owned, stamp, write_json
from .checkpoints import (CHECKPOINT_MARKER, COMPLETED_FILE, RESUMABLE_CHANGES, changed_options, check_explicit_resume,
                          check_resume_data, check_resume_options, data_changes, find_resume_checkpoint, is_complete,
                          options_snapshot, read_completed, read_marker, rotate_checkpoints)
from .config import TrainConfig
from .errors import AiroError, ConfigError
from .fingerprint import dataset_content_hash
from .folders import (check_folders, check_inputs_outside, check_separate, check_space, needed_space,
                      output_holds_working_dir, probe_writable)
from .lock import folder_locks

TRAINING_INFO_FILE = "airo_training.json"  # next to a saved adapter/model: how it was trained
DATA_REPORT_FILE = "data_report.json"

__all__ = [
    "CHECKPOINT_MARKER", "COMPLETED_FILE", "MergeResult", "NothingLeftToTrain", "PaddingCollator",
    "RESUMABLE_CHANGES", "TRAINING_INFO_FILE", "TrainContext", "TrainResult", "atomic_directory",
    "check_folders", "check_replaceable", "check_resume_options", "find_resume_checkpoint", "merge_adapter",
    "output_holds_working_dir", "read_completed", "rotate_checkpoints", "run_training", "save_tokenizer",
    "select_actions", "select_loader",
]


# -- results and the context actions get -------------------------------------------------------

@dataclass
class TrainContext:
    """What a post-training action receives (``run(ctx)``), on the main process only.

    ``output_dir`` holds the final artifacts (the adapter for LoRA/QLoRA, the model for a
    full fine-tune); ``adapter_dir`` is that folder for adapter runs, else None.
    ``outputs`` collects what actions wrote (name -> path) for the run summary;
    ``info`` is the training metadata saved as ``airo_training.json``.
    """

    config: TrainConfig
    model: Any
    tokenizer: Any
    template: Any
    output_dir: str
    working_dir: str
    adapter_dir: str | None
    is_main_process: bool
    trainer: Any = None
    report: Any = None
    loaded: Any = None  # the LoadedModel (is_peft, quantized_bits, notes)
    state_dict: dict | None = None  # gathered weights when the model is sharded (ZeRO-3)
    info: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def merged_output_dir(self) -> str | None:
        return self.config.run.merged_output_dir

    @property
    def is_peft(self) -> bool:
        return bool(self.loaded.is_peft) if self.loaded is not None else self.adapter_dir is not None

    def log(self, message: str) -> None:
        if self.is_main_process:
            print(f"[airo] {message}", flush=True)


@dataclass
class TrainResult:
    output_dir: str | None
    working_dir: str
    merged_output_dir: str | None = None
    global_step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None
    already_complete: bool = False
    actions: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    is_main_process: bool = True
    final_loss: float | None = None  # the last logged training loss (all ranks averaged)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.is_main_process:
            return ""
        lines = []
        if self.already_complete:
            lines.append(f"This run is already complete (step {self.global_step}); nothing to do.")
            lines.append(f"  marker: {Path(self.working_dir) / COMPLETED_FILE}")
            lines.append(f"  to train again, use a new --working_dir or remove {self.working_dir}")
        else:
            loss = self.final_loss
            lines.append(f"Training finished at step {self.global_step}"
                         + (f", last logged loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
                         + (f" (resumed from {self.resumed_from})" if self.resumed_from else "") + ".")
        for name, path in self.outputs.items():
            lines.append(f"  {name}: {path}")
        lines.append(f"  checkpoints and logs: {self.working_dir}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class MergeResult:
    out: str
    base: str
    adapter: str
    method: str
    dtype: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"Merged {self.adapter} into {self.base} ({self.method} merge, {self.dtype}).",
                 f"  merged model: {self.out}"]
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


# -- small helpers --------------------------------------------------------------------------

def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _say(message: str, *, main: bool = True) -> None:
    if main:
        print(f"[airo] {message}", flush=True)


def _barrier() -> None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> None:
    """``tokenizer.save_pretrained`` that keeps ``legacy``: transformers 5 does not write it,
    and a llama tokenizer reloaded without it tokenizes text after special tokens
    differently (legacy=False) from the one the model was trained with."""
    tokenizer.save_pretrained(str(directory))
    legacy = getattr(tokenizer, "legacy", None)
    path = Path(directory) / "tokenizer_config.json"
    if isinstance(legacy, bool) and path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("legacy") != legacy:
            data["legacy"] = legacy
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -- choosing things ------------------------------------------------------------------------

def select_loader(config: TrainConfig):
    from .plugins import get_registry

    name = config.model.loader
    if name == "auto":
        name = "full" if config.model.full_finetune else "qlora"
    return get_registry().get("loaders", name)


def select_actions(config: TrainConfig, registry=None) -> list:
    """The post-training actions to run, in ``order``.

    ``auto``: each action whose ``auto(config)`` is true; ``none``; a comma list; ``auto,NAME``
    adds NAME to the automatic ones.
    """
    if registry is None:
        from .plugins import get_registry

        registry = get_registry()
    spec = [s.strip() for s in (config.run.post_train_actions or "auto").split(",") if s.strip()]
    chosen: dict[str, Any] = {}
    for name in spec:
        if name == "none":
            if len(spec) > 1:
                raise ConfigError("--post_train_actions none cannot be combined with other actions")
            return []
        if name == "auto":
            for action in registry.actions.values():
                if action.auto is not None and action.auto(config):
                    chosen[action.name] = action
        else:
            chosen[name] = registry.get("actions", name)
    return sorted(chosen.values(), key=lambda a: (a.order, a.name))


# -- batching ------------------------------------------------------------------------------------

class PaddingCollator:
    """Right-pads a batch: input_ids with the pad id, labels with -100, plus attention_mask."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, label_pad: int = -100):
        if pad_token_id is None:
            raise ConfigError("the tokenizer has no pad token; pass --pad_token")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad = label_pad

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = int(math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of)
        n = len(features)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), self.label_pad, dtype=torch.long)
        attention = torch.zeros((n, longest), dtype=torch.long)
        for i, f in enumerate(features):
            ids = list(f["input_ids"])
            lab = list(f["labels"]) if "labels" in f and f["labels"] is not None else ids
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
            attention[i, : len(ids)] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


# -- checkpoints: stamped before the save, marked complete after it -----------------------------

class NothingLeftToTrain(Exception):
    """The resumed checkpoint is at or past the planned last step (e.g. a run killed while its
    post-training actions ran). Raised from ``on_train_begin``, after the Trainer restored the
    weights and state, because its loop would otherwise train one step more."""


def _callbacks():
    """The Trainer callbacks airo adds (defined here so transformers is imported lazily)."""
    from transformers import TrainerCallback

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

        def on_step_end(self, args, state, control, **kwargs):
            # Always leave a complete checkpoint at the very end (whatever --save_strategy),
            # so a failing post-training action never costs the training.
            if state.global_step >= state.max_steps:
                control.should_save = True
            if control.should_save and is_complete(self._folder(args, state)):
                control.should_save = False
            if control.should_save:
                self._begin_save(args, state)
            return control

        def on_epoch_end(self, args, state, control, **kwargs):
            # --save_strategy epoch: the last step was saved at step end; never save a step twice
            if control.should_save and is_complete(self._folder(args, state)):
                control.should_save = False
            if control.should_save:
                self._begin_save(args, state)
            return control

        def on_save(self, args, state, control, **kwargs):
            _barrier()
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
            _barrier()
            return control

    class TokensPerSecondCallback(TrainerCallback):
        """Shows tokens/s (non-padding, all ranks) on the progress bar next to tqdm's ETA."""

        def __init__(self):
            self.start = None
            self.start_tokens = 0
            self.bar_owner = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.time()
            self.start_tokens = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            if not state.is_world_process_zero or self.start is None:
                return control
            elapsed = time.time() - self.start
            tokens = state.num_input_tokens_seen - self.start_tokens
            if elapsed > 0 and self.bar_owner is not None and getattr(self.bar_owner, "training_bar", None):
                self.bar_owner.training_bar.set_postfix({"tok/s": f"{tokens / elapsed:,.0f}"}, refresh=True)
            return control

    return CheckpointMarkerCallback, TokensPerSecondCallback

# -- the run ----------------------------------------------------------------------------------

def _training_overrides(config: TrainConfig) -> dict[str, Any]:
    import torch

    t = config.training
    overrides: dict[str, Any] = {"optim": config.resolve_optim()}
    if "include_num_input_tokens_seen" not in config.explicit:
        overrides["include_num_input_tokens_seen"] = "non_padding"
    # The seed's --gradient_checkpointing is transformers 5's activation_checkpointing.
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if t.get(old) is not None:
            if t.get(new) is None:
                overrides[new] = t[old]
            overrides[old] = None
    if gradient_checkpointing(config) and not (t.get("activation_checkpointing_kwargs")
                                               or t.get("gradient_checkpointing_kwargs")):
        overrides["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    if not torch.cuda.is_available() and "use_cpu" not in config.explicit:
        overrides["use_cpu"] = True  # bf16 on CPU needs it; transformers refuses bf16 "without a GPU" otherwise
    if "report_to" in t and t["report_to"] is None:
        overrides["report_to"] = "none"  # `--report_to none` may arrive as None; the Trainer wants "none"
    alpha = t.get("neftune_noise_alpha")
    if alpha is not None and float(alpha) == 0:
        overrides["neftune_noise_alpha"] = None
    if config.data.eval_dataset_size == 0 and str(t.get("eval_strategy", "no")) != "no":
        overrides["eval_strategy"] = "no"
    elif config.data.eval_dataset_size > 0 and "eval_strategy" not in config.explicit:
        # Records held out for evaluation are evaluated: at every checkpoint, unless asked otherwise
        # (transformers' default, "no", would hold them out of training for nothing).
        save = str(t.get("save_strategy", "steps"))
        overrides["eval_strategy"] = save if save in ("steps", "epoch") else "epoch"
        if overrides["eval_strategy"] == "steps" and "eval_steps" not in config.explicit:
            overrides["eval_steps"] = t.get("save_steps")
    # airo rotates checkpoints itself, counting only complete (marked) ones: the Trainer's
    # rotation runs before the marker and could delete the last complete checkpoint.
    overrides["save_total_limit"] = None
    return overrides


def gradient_checkpointing(config: TrainConfig) -> bool:
    """--gradient_checkpointing (the seed's name) or --activation_checkpointing (transformers 5's)."""
    t = config.training
    return bool(t.get("activation_checkpointing") or t.get("gradient_checkpointing"))


def _disable_eval(args) -> None:
    from transformers.trainer_utils import IntervalStrategy

    args.eval_strategy = IntervalStrategy.NO
    args.do_eval = False
    if getattr(args, "load_best_model_at_end", False):
        args.load_best_model_at_end = False


def _count_params(model) -> tuple[int, int]:
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":  # packed 4-bit: two weights per byte
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def _planned_steps(n_examples: int, args) -> tuple[int, int]:
    """(optimizer steps, updates per epoch) as the Trainer will compute them."""
    batches = math.ceil(n_examples / max(1, args.per_device_train_batch_size * args.world_size))
    per_epoch = max(batches // args.gradient_accumulation_steps
                    + int(batches % args.gradient_accumulation_steps > 0), 1)
    if args.max_steps and args.max_steps > 0:
        return args.max_steps, per_epoch
    return int(math.ceil(args.num_train_epochs * per_epoch)), per_epoch


def _plain(value) -> str:
    return str(getattr(value, "value", value))


_SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _weights_dtype(model) -> str | None:
    """The dtype of the trained weights (first trainable parameter), e.g. ``float32``."""
    first = None
    for p in model.parameters():
        if first is None:
            first = p
        if p.requires_grad:
            return str(p.dtype).replace("torch.", "")
    return str(first.dtype).replace("torch.", "") if first is not None else None


def precision_label(loaded, args) -> str:
    """What really happens: the mixed precision for adapters (LoRA weights are fp32); for a
    full fine-tune the weights' dtype, plus the mixed precision when it differs."""
    amp = "bf16" if args.bf16 else ("fp16" if args.fp16 else None)
    if loaded.is_peft:
        return amp or "fp32"
    weights = _weights_dtype(loaded.model)
    weights = _SHORT_DTYPES.get(weights or "", weights or "fp32")
    if amp is None or weights == amp:
        return weights
    return f"{weights} weights, {amp} mixed precision"


def _summary_lines(config, loader_name, loaded, prepared, args, steps, resume,
                   action_names: list[str] | None = None) -> list[str]:
    trainable, total = _count_params(loaded.model)
    n_train = len(prepared.train)
    n_eval = len(prepared.eval) if prepared.eval is not None else 0
    tokens = sum(len(x) for x in prepared.train["input_ids"]) if n_train else 0
    trained = sum(sum(1 for v in x if v != -100) for x in prepared.train["labels"]) if n_train else 0
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    alpha = args.neftune_noise_alpha
    neftune = (f"on, noise alpha {alpha:g}" + (" (the seed's default; --neftune_noise_alpha None turns it off)"
                                                if "neftune_noise_alpha" not in config.explicit else "")
               if alpha else "off")
    precision = precision_label(loaded, args)
    bits = config.model.bits
    lines = [
        "run summary",
        f"  model:            {config.model.model_name_or_path}",
        f"  loader:           {loader_name} ({'LoRA adapter' if loaded.is_peft else 'full fine-tune'}"
        + (f", {bits}-bit base" if loaded.is_peft else "") + f", {precision})",
        f"  format/template:  {prepared.format_name} / {prepared.template_name}"
        + (f" (train on {prepared.train_on})" if getattr(prepared, "train_on", None) else ""),
        f"  trainable params: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)",
        f"  examples:         {n_train:,} train, {n_eval:,} eval"
        + (f" (eval every {args.eval_steps} steps)" if n_eval and args.eval_strategy == "steps"
           and args.eval_steps else ""),
        f"  tokens:           {tokens:,} train ({trained:,} trained on)",
        f"  steps:            {steps:,} ({args.num_train_epochs:g} epochs)" if not (args.max_steps and args.max_steps > 0)
        else f"  steps:            {steps:,} (--max_steps)",
        f"  batch:            {effective} effective = {args.per_device_train_batch_size} per device x "
        f"{args.gradient_accumulation_steps} accumulation x {args.world_size} process(es)",
        f"  optimizer:        {_plain(args.optim)}, lr {args.learning_rate:g}, {_plain(args.lr_scheduler_type)} schedule",
        f"  NEFTune:          {neftune}",
        f"  attention:        {getattr(loaded.model.config, '_attn_implementation', None) or 'default'}"
        + (", gradient checkpointing" if args.activation_checkpointing else ""),
    ]
    if args.deepspeed:
        lines.append(f"  DeepSpeed:        {args.deepspeed if isinstance(args.deepspeed, str) else 'inline config'}")
    lines.append(f"  working dir:      {config.working_dir}")
    lines.append(f"  output dir:       {config.run.output_dir}")
    if config.run.merged_output_dir:
        if will_merge(config, loaded, action_names):
            lines.append(f"  merged output:    {config.run.merged_output_dir}")
        else:
            why = ("a full fine-tune has no adapter to merge" if not loaded.is_peft
                   else "the merge action is not in --post_train_actions")
            lines.append(f"  note: --merged_output_dir is set but nothing will be merged: {why}")
    if resume is not None:
        lines.append(f"  resuming from:    {resume}")
    for note in loaded.notes:
        lines.append(f"  note: {note}")
    return lines


def will_merge(config: TrainConfig, loaded, action_names: list[str] | None) -> bool:
    """Whether a merged model will be written to --merged_output_dir."""
    return bool(config.run.merged_output_dir) and bool(loaded.is_peft) and "merge" in (action_names or [])


def _base_model_path(name: str | None) -> str | None:
    """A local base model folder as an absolute path (so a merge works from anywhere)."""
    if name and Path(name).is_dir():
        return str(Path(name).resolve())
    return name


def _training_info(config: TrainConfig, loaded, prepared, loader_name: str, args) -> dict[str, Any]:
    from . import __version__

    info: dict[str, Any] = {
        "airo_version": __version__,
        "base_model": _base_model_path(config.model.model_name_or_path),
        "loader": loader_name,
        "peft": bool(loaded.is_peft),
        "bits": loaded.quantized_bits or (config.model.bits if loaded.is_peft else None),
        "quant_type": config.model.quant_type if loaded.quantized_bits == 4 else None,
        "double_quant": bool(config.model.double_quant) if loaded.quantized_bits == 4 else None,
        "compute_dtype": "bfloat16" if args.bf16 else ("float16" if args.fp16 else "float32"),
        "weights_dtype": None if loaded.is_peft else _weights_dtype(loaded.model),
        "dataset_format": prepared.format_name,
        "prompt_template": prepared.template_name,
    }
    if loaded.quantized_bits == 4:
        info.update(_quantized_layout(loaded.model))
    return info


def _quantized_layout(model) -> dict[str, Any]:
    """Names (in the base model) of the 4-bit layers, and how they were quantized."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover
        return {}
    names, blocksize, storage_dtype = [], None, None
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            clean = name
            for prefix in ("base_model.model.",):
                if clean.startswith(prefix):
                    clean = clean[len(prefix):]
            if clean.endswith(".base_layer"):
                clean = clean[: -len(".base_layer")]
            names.append(clean)
            qs = getattr(module.weight, "quant_state", None)
            if qs is not None and blocksize is None:
                blocksize = qs.blocksize
                storage_dtype = str(qs.dtype).replace("torch.", "")
    return {"quantized_modules": names, "quant_blocksize": blocksize, "quant_input_dtype": storage_dtype}


# -- the recipe ----------------------------------------------------------------------------------

def _require(config: TrainConfig) -> None:
    for option, value in (("--output_dir", config.run.output_dir),
                          ("--model_name_or_path", config.model.model_name_or_path),
                          ("--dataset", config.data.dataset)):
        if not value:
            raise ConfigError(f"{option} is required")


def _run_locks(config: TrainConfig, main: bool):
    """Exclusive locks on the run's output folders, held by the main process for the whole run."""
    if not main:
        return contextlib.nullcontext()
    named = [("working dir", config.working_dir), ("output dir", config.run.output_dir)]
    if config.run.merged_output_dir:
        named.append(("merged output dir", config.run.merged_output_dir))
    return folder_locks(named)


def _already_complete(config: TrainConfig, working_dir: Path, data_hash: str | None, main: bool) -> TrainResult | None:
    """The result of a finished run (``completed``), or None when there is none to trust."""
    done = read_completed(working_dir)
    if done is None:
        if (working_dir / COMPLETED_FILE).exists():
            _say(f"note: {working_dir / COMPLETED_FILE} is not a readable record of a finished run; ignoring it and "
                 "looking for checkpoints", main=main)
        return None
    notes = []
    changed = changed_options(done.get("config"), config)
    if changed:
        notes.append(f"note: options differ from the completed run: {', '.join(changed)}; to train with them use a "
                     f"new --working_dir (or remove {working_dir})")
    data = data_changes(done.get("data"), content_hash=data_hash)
    if data:
        notes.append(f"note: the data differs from the completed run's: {'; '.join(data)}; to train on it use a new "
                     f"--working_dir (or remove {working_dir})")
    return TrainResult(output_dir=config.run.output_dir, working_dir=str(working_dir),
                       merged_output_dir=config.run.merged_output_dir, global_step=done["global_step"],
                       metrics=done.get("metrics", {}), final_loss=done.get("final_loss"), already_complete=True,
                       outputs=done.get("outputs", {}), actions=done.get("actions", []), is_main_process=main,
                       notes=notes)


def _resume_point(config: TrainConfig, working_dir: Path, data_hash: str | None) -> tuple[Path | None, list[Path], list[str]]:
    """(checkpoint to resume from, airo's interrupted saves to remove, notes), checked against
    this command's options and data before any model loads."""
    explicit = config.training.get("resume_from_checkpoint")
    if explicit:
        resume, incomplete, notes = Path(explicit), [], check_explicit_resume(explicit)
    else:
        resume, incomplete = find_resume_checkpoint(working_dir)
        notes = []
    if resume is not None:
        check_resume_options(resume, config)
        check_resume_data(resume, content_hash=data_hash)
    return resume, incomplete, notes


def _claim_folders(config: TrainConfig) -> None:
    """Create and stamp the working dir (and the output dir when it holds the working dir)."""
    if output_holds_working_dir(config):
        claim_folder(config.run.output_dir, kind="output", what="output dir")
    claim_folder(config.working_dir, kind="working dir", what="working dir")


def _data_record(data_hash: str | None, config: TrainConfig, prepared) -> dict[str, Any]:
    return {"dataset": config.data.dataset, "content_hash": data_hash, "train_examples": len(prepared.train),
            "eval_examples": len(prepared.eval) if prepared.eval is not None else 0}


def _train(trainer, resume: Path | None, start_step: int, main: bool) -> dict[str, Any]:
    """``Trainer.train`` (resuming restores optimizer, scheduler, RNG and data position);
    returns its metrics. A checkpoint already at the last step trains nothing."""
    try:
        metrics = dict(trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None).metrics)
    except NothingLeftToTrain:
        trainer.is_in_train = False
        _say(f"{resume} is at the planned last step ({start_step}): nothing left to train", main=main)
        return {}
    if trainer.state.global_step <= start_step:
        # nothing was trained in this call (resumed at the last step): the Trainer reports a
        # train_loss of 0.0, which says nothing about the run
        metrics.pop("train_loss", None)
    return metrics


def run_training(config: TrainConfig) -> TrainResult:
    """Train as configured, resume when possible, then run the post-training actions."""
    import torch  # noqa: F401 - fail early and clearly if torch is missing

    _require(config)
    main = _rank() == 0
    working_dir = Path(config.working_dir)
    loader = select_loader(config)
    actions = select_actions(config)  # fail on a misspelt action before training
    action_names = [a.name for a in actions]
    check_folders(config, action_names)
    space_needed = needed_space(config, will_merge="merge" in action_names and not config.model.full_finetune)
    for what, folder, _ in space_needed:
        probe_writable(folder, what)
    data_hash = dataset_content_hash(config.data.dataset)
    with _run_locks(config, main):
        done = _already_complete(config, working_dir, data_hash, main)
        if done is not None:
            return done
        resume, incomplete, resume_notes = _resume_point(config, working_dir, data_hash)
        check_space(space_needed)
        if main:
            _claim_folders(config)
        return _train_and_finish(config, loader, actions, resume, incomplete, resume_notes, data_hash, main)


def _train_and_finish(config: TrainConfig, loader, actions, resume: Path | None, incomplete: list[Path],
                      resume_notes: list[str], data_hash: str | None, main: bool) -> TrainResult:
    from transformers import Trainer, set_seed
    from transformers.trainer_callback import ProgressCallback

    from .data.pipeline import prepare_datasets

    working_dir = Path(config.working_dir)
    action_names = [a.name for a in actions]
    if _reports_to(config, "wandb"):
        os.environ.setdefault("WANDB_DIR", str(working_dir))

    args = config.training_arguments(**_training_overrides(config))
    main = args.process_index == 0
    for message in config.warnings:
        _say(f"warning: {message}", main=main)
    if args.deepspeed:
        _init_deepspeed_comm()
    set_seed(args.seed)  # before the model: LoRA's random init must be reproducible
    loaded = loader.load(config)
    model, tokenizer = loaded.model, loaded.tokenizer

    with args.main_process_first(desc="preparing the dataset"):
        prepared = prepare_datasets(config, tokenizer, rejects_dir=str(working_dir) if main else None)
    data_record = _data_record(data_hash, config, prepared)
    if resume is not None:  # the example counts are known only now
        check_resume_data(resume, train_examples=data_record["train_examples"],
                          eval_examples=data_record["eval_examples"])
    if prepared.eval is None or len(prepared.eval) == 0:
        if args.eval_strategy != "no":
            _say("no eval split (--eval_dataset_size 0 or too little data): evaluation is off", main=main)
        _disable_eval(args)
        eval_dataset = None
    else:
        eval_dataset = prepared.eval
    if len(prepared.train) == 0:
        raise AiroError("no training examples left after preparing the data; see the data report")
    steps, _ = _planned_steps(len(prepared.train), args)

    CheckpointMarker, TokensPerSecond = _callbacks()
    tps = TokensPerSecond()
    marker = CheckpointMarker(options=options_snapshot(config), data=data_record,
                              save_total_limit=config.training.get("save_total_limit"))
    trainer = Trainer(model=model, args=args, train_dataset=prepared.train, eval_dataset=eval_dataset,
                      data_collator=PaddingCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                      callbacks=[marker, tps])
    tps.bar_owner = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ProgressCallback)), None)

    if main:
        for line in _summary_lines(config, loader.name, loaded, prepared, args, steps, resume, action_names):
            print(f"[airo] {line}", flush=True)
        for note in resume_notes:
            _say(f"  note: {note}")
        for line in prepared.report.summary_lines():
            print(f"[airo] {line}", flush=True)
        if incomplete:
            _say("removing incomplete checkpoint(s) left by an interrupted save: "
                 + ", ".join(p.name for p in incomplete))
    _barrier()
    if main:
        for path in incomplete:
            shutil.rmtree(path, ignore_errors=True)
    _barrier()

    start_step = 0
    if resume is not None:
        state = (read_marker(resume) or {}).get("global_step")
        if state is None:
            trainer_state = json.loads((resume / "trainer_state.json").read_text(encoding="utf-8"))
            state = trainer_state.get("global_step")
        start_step = int(state or 0)
        _say(f"resuming from {resume} (step {start_step} of {steps})", main=main)
    metrics = _train(trainer, resume, start_step, main)

    # ZeRO-3 shards the weights: gather them on every rank before rank 0 saves.
    state_dict = None
    if trainer.is_deepspeed_enabled:
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and getattr(plugin, "zero_stage", 0) == 3:
            state_dict = trainer.accelerator.get_state_dict(trainer.deepspeed)

    output_dir = str(Path(config.run.output_dir))
    result = TrainResult(output_dir=output_dir, working_dir=str(working_dir),
                         merged_output_dir=config.run.merged_output_dir, global_step=trainer.state.global_step,
                         metrics=metrics, resumed_from=str(resume) if resume is not None else None,
                         actions=action_names, is_main_process=main,
                         final_loss=_last_logged_loss(trainer.state.log_history, metrics))
    if main:
        ctx = TrainContext(config=config, model=trainer.model if loaded.is_peft else _unwrap(trainer),
                           tokenizer=tokenizer, template=prepared.template, output_dir=output_dir,
                           working_dir=str(working_dir), adapter_dir=output_dir if loaded.is_peft else None,
                           is_main_process=True, trainer=trainer, report=prepared.report, loaded=loaded,
                           state_dict=state_dict,
                           info=_training_info(config, loaded, prepared, loader.name, args))
        ctx.info["global_step"] = trainer.state.global_step
        ctx.info["data"] = data_record
        for action in actions:
            _say(f"post-training action: {action.name}")
            action.run(ctx)
        result.outputs = dict(ctx.outputs)
        write_json(working_dir / COMPLETED_FILE, {
            "global_step": trainer.state.global_step, "output_dir": output_dir,
            "merged_output_dir": config.run.merged_output_dir, "outputs": result.outputs,
            "actions": result.actions, "metrics": metrics, "final_loss": result.final_loss,
            "resumed_from": result.resumed_from, "config": options_snapshot(config), "data": data_record,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if _plain(args.save_strategy) == "no":
            # the final checkpoint was only kept in case an action failed; the user asked for none
            final = working_dir / f"checkpoint-{trainer.state.global_step}"
            if is_complete(final):
                (final / CHECKPOINT_MARKER).unlink(missing_ok=True)
                shutil.rmtree(final, ignore_errors=True)
    # No barrier here: the other ranks may exit while rank 0 saves and merges (which can take
    # longer than the collective timeout for a big model).
    return result

def _reports_to(config: TrainConfig, name: str) -> bool:
    """Whether --report_to sends to ``name`` (directly or through ``all``)."""
    value = config.training.get("report_to")
    if value is None:
        return False
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
    items = {str(i).strip().lower() for i in items}
    return name in items or "all" in items


def _init_deepspeed_comm() -> None:
    """On CPU (use_cpu) accelerate sets up torch.distributed but not DeepSpeed's comm layer;
    ZeRO-3's zero.Init (inside from_pretrained) then sees a world of 1. Attach it."""
    try:
        import deepspeed
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized() and not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=dist.get_backend())


def _last_logged_loss(history: list[dict[str, Any]], metrics: dict[str, Any]) -> float | None:
    """The last logged loss (averaged over ranks). Not ``train_loss``: under DDP transformers
    computes that from rank 0's share of the token-weighted loss only."""
    for entry in reversed(history or []):
        if "loss" in entry:
            return float(entry["loss"])
    return None


def _unwrap(trainer):
    try:
        return trainer.accelerator.unwrap_model(trainer.model)
    except Exception:  # noqa: BLE001
        return trainer.model


# -- merge ------------------------------------------------------------------------------------------

_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
           "float32": "float32", "fp32": "float32"}


def read_training_info(adapter: str | os.PathLike) -> dict[str, Any]:
    path = Path(adapter) / TRAINING_INFO_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return {}
    return {}


def dequantize_like_training(model, *, quant_type: str = "nf4", double_quant: bool = True,
                             modules: list[str] | None = None, blocksize: int | None = None,
                             input_dtype=None) -> int:
    """Replace each base Linear weight by its 4-bit round trip (quantize, dequantize).

    The adapter of a QLoRA run learned corrections to the *quantized* base; merging it into
    the round-tripped weights gives the model the adapter was trained against. ``modules``
    are the layer names that were 4-bit in training (recorded by the save action); without
    them, every Linear but the LM head. Returns the number of layers changed.
    """
    import torch
    from bitsandbytes import functional as bnbf

    wanted = set(modules) if modules else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if wanted is not None:
            if name not in wanted:
                continue
        elif module is output or name.split(".")[-1] == "lm_head":
            continue
        weight = module.weight.data
        source = weight.to(device=device, dtype=input_dtype or weight.dtype)
        packed, state = bnbf.quantize_4bit(source, blocksize=blocksize, compress_statistics=double_quant,
                                           quant_type=quant_type)
        restored = bnbf.dequantize_4bit(packed, state)
        module.weight.data = restored.to(device=weight.device, dtype=weight.dtype)
        count += 1
    return count


def merge_adapter(base: str | None, adapter: str, out: str, method: str = "auto", max_shard_size: str = "5GB",
                  dtype: str | None = None, *, chat_template: str | None = None,
                  log: Callable[[str], None] | None = None) -> MergeResult:
    """Merge a LoRA adapter into its base and save a plain transformers model at ``out``.

    ``method``: ``dequantize`` (the base goes through the 4-bit round trip the adapter was
    trained against, default for QLoRA adapters), ``direct`` (plain merge), or ``auto``.
    ``dtype``: of the merged weights (default: the run's compute dtype, bf16 with --bf16,
    else float32). The tokenizer is taken from the adapter folder when saved there (with
    its chat_template), else from the base. The saved config has no quantization_config.
    """
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    say = log or (lambda m: print(f"[airo] {m}", flush=True))
    adapter_path = Path(adapter)
    if not (adapter_path / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter!r} is not a LoRA adapter folder (no adapter_config.json)")
    info = read_training_info(adapter_path)
    peft_config = PeftConfig.from_pretrained(str(adapter_path))
    base = base or info.get("base_model") or peft_config.base_model_name_or_path
    if not base:
        raise ConfigError("the adapter does not say which base model it belongs to; pass --base")
    notes: list[str] = []

    named = [("--out", out), ("--adapter", adapter_path)]
    if Path(base).is_dir():
        named.append(("--base", base))
    check_separate(named, allowed=(("--adapter", "--base"), ("--base", "--adapter")))
    check_inputs_outside([("--out", out)], [("--adapter", adapter_path), ("--base", base)])
    check_replaceable(out, what="merge output folder")
    if method not in ("auto", "dequantize", "direct"):
        raise ConfigError(f"merge method must be auto, dequantize or direct, got {method!r}")
    if method == "auto":
        method = "dequantize" if info.get("bits") == 4 else "direct"
    dtype_name = _DTYPES.get(dtype or "", None) if dtype else None
    if dtype and dtype_name is None:
        raise ConfigError(f"merge dtype must be bfloat16, float16 or float32, got {dtype!r}")
    if dtype_name is None:
        dtype_name = info.get("compute_dtype") or "float32"
    torch_dtype = getattr(torch, dtype_name)

    tokenizer_source = adapter_path if (adapter_path / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    if chat_template:
        tokenizer.chat_template = chat_template

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    embeddings = model.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.weight.shape[0]:
        # training added special tokens (e.g. --pad_token): the adapter holds the grown embeddings
        model.resize_token_embeddings(len(tokenizer))
        notes.append(f"resized the base's token embeddings to {len(tokenizer)} for the added tokens")
    if method == "dequantize":
        quant_type = info.get("quant_type") or "nf4"
        double_quant = info.get("double_quant")
        if double_quant is None:
            double_quant = True
        if not info:
            notes.append("no airo_training.json beside the adapter: assuming the QLoRA defaults (nf4, double quant)")
        input_dtype = info.get("quant_input_dtype")
        count = dequantize_like_training(
            model, quant_type=quant_type, double_quant=bool(double_quant), modules=info.get("quantized_modules"),
            blocksize=info.get("quant_blocksize"), input_dtype=getattr(torch, input_dtype) if input_dtype else None)
        say(f"merge: dequantize path: {count} base layers went through the 4-bit {quant_type} round trip "
            "the adapter was trained against, then the LoRA weights were merged")
    else:
        say("merge: direct path: LoRA weights merged into the base weights as stored")
    notes.append(f"merge path: {method}")

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = PeftModel.from_pretrained(model, str(adapter_path))
    model = model.merge_and_unload()
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):  # as the training tokenizer says
        value = getattr(tokenizer, attr, None)
        if value is not None:
            for cfg in (model.config, getattr(model, "generation_config", None)):
                if cfg is not None:
                    setattr(cfg, attr, value)
    model.config.use_cache = True
    model.config.dtype = torch_dtype

    out_path = Path(out)
    with atomic_directory(out_path, kind="merged model", what="merge output folder") as tmp:
        model.save_pretrained(str(tmp), max_shard_size=max_shard_size)
        save_tokenizer(tokenizer, tmp)
        config_file = tmp / "config.json"
        data = json.loads(config_file.read_text(encoding="utf-8"))
        if data.pop("quantization_config", None) is not None:
            config_file.write_text(json.dumps(data, indent=2), encoding="utf-8")
        write_json(tmp / "airo_merge.json", {"base": _base_model_path(str(base)),
                                               "adapter": str(adapter_path.resolve()), "method": method,
                                               "dtype": dtype_name, "training": info})
    return MergeResult(out=str(out_path), base=str(base), adapter=str(adapter_path), method=method,
                       dtype=dtype_name, notes=notes)
