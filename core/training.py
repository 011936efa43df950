"""The training run: loader -> data -> HF Trainer (DDP / DeepSpeed) -> post-training actions.

Read top to bottom, :func:`run_training` is the whole recipe:

1. a ``working_dir/completed`` marker means the run already finished: say so, return;
2. ``TrainingArguments`` from the config (``optim auto`` resolved; distributed set up);
3. the model loader plugin (``--loader``, auto: ``full`` with ``--full_finetune`` else
   ``qlora``) returns the model and the tokenizer;
4. the data pipeline returns tokenized train/eval datasets (rejects to ``working_dir``);
5. the run summary (rank 0), then ``Trainer.train``, resuming from the newest
   *complete* checkpoint in ``working_dir`` (a marker file written after each save;
   optimizer, scheduler, RNG and data position come back with it);
6. post-training actions (save, merge, third-party ones) on rank 0, in ``order``;
7. ``working_dir/completed`` (JSON: final step, outputs).

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
from typing import Any, Callable, Iterator

from .config import TrainConfig
from .errors import AiroError, ConfigError

COMPLETED_FILE = "completed"
CHECKPOINT_MARKER = "airo-checkpoint-complete.json"
TRAINING_INFO_FILE = "airo_training.json"  # next to a saved adapter/model: how it was trained
DATA_REPORT_FILE = "data_report.json"

__all__ = [
    "CHECKPOINT_MARKER", "COMPLETED_FILE", "MergeResult", "PaddingCollator", "TRAINING_INFO_FILE",
    "TrainContext", "TrainResult", "atomic_directory", "find_resume_checkpoint", "merge_adapter",
    "read_completed", "run_training", "select_actions", "select_loader",
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
            lines.append(f"  marker: {Path(self.working_dir) / COMPLETED_FILE} (delete it to train again)")
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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_completed(working_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(working_dir) / COMPLETED_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, keep_existing: bool = False) -> Iterator[Path]:
    """Write a folder all at once: yield a temp folder beside ``target``, then swap it in.

    A crash leaves the previous ``target`` (or nothing), never a half-written one. With
    ``keep_existing`` (the target also holds other things, e.g. the working dir) files are
    moved in one by one instead, replacing same-named ones.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.airo-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_existing and target.exists():
        for item in tmp.iterdir():
            dest = target / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
        tmp.rmdir()
        return
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.airo-old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _inside(child: str | os.PathLike, parent: str | os.PathLike) -> bool:
    child, parent = Path(child).resolve(), Path(parent).resolve()
    return child == parent or parent in child.parents


def output_holds_working_dir(config: TrainConfig) -> bool:
    """True when the working dir is the output dir or inside it (then outputs are written file by file)."""
    return bool(config.run.output_dir) and _inside(config.working_dir, config.run.output_dir)


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


# -- checkpoints and resume ------------------------------------------------------------------------

def _checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith("checkpoint-"):
        return None
    tail = name[len("checkpoint-"):]
    return int(tail) if tail.isdigit() else None


def find_resume_checkpoint(working_dir: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """(newest complete checkpoint or None, newer incomplete ones)."""
    root = Path(working_dir)
    if not root.is_dir():
        return None, []
    found = sorted(((s, p) for p in root.iterdir() if p.is_dir() and (s := _checkpoint_step(p)) is not None),
                   key=lambda sp: sp[0])
    complete = [p for _, p in found if (p / CHECKPOINT_MARKER).is_file()]
    best = complete[-1] if complete else None
    best_step = _checkpoint_step(best) if best else -1
    incomplete = [p for s, p in found if s > best_step and not (p / CHECKPOINT_MARKER).is_file()]
    return best, incomplete


def _callbacks():
    """The Trainer callbacks airo adds (defined here so transformers is imported lazily)."""
    from transformers import TrainerCallback

    class CheckpointMarkerCallback(TrainerCallback):
        """After every rank has finished writing a checkpoint, rank 0 marks it complete."""

        def on_step_end(self, args, state, control, **kwargs):
            # Always leave a complete checkpoint at the very end, so a failing post-training
            # action never costs the training.
            if state.global_step >= state.max_steps and args.save_strategy != "no":
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            _barrier()
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    _write_json(ckpt / CHECKPOINT_MARKER, {
                        "global_step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
                        "num_input_tokens_seen": state.num_input_tokens_seen, "time": time.time()})
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
    if "resume_from_checkpoint" in t:
        overrides.pop("resume_from_checkpoint", None)
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


def _summary_lines(config, loader_name, loaded, prepared, args, steps, resume) -> list[str]:
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
    precision = "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32")
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
        lines.append(f"  merged output:    {config.run.merged_output_dir}")
    if resume is not None:
        lines.append(f"  resuming from:    {resume}")
    for note in loaded.notes:
        lines.append(f"  note: {note}")
    return lines


def _training_info(config: TrainConfig, loaded, prepared, loader_name: str, args) -> dict[str, Any]:
    from . import __version__

    info: dict[str, Any] = {
        "airo_version": __version__,
        "base_model": config.model.model_name_or_path,
        "loader": loader_name,
        "peft": bool(loaded.is_peft),
        "bits": loaded.quantized_bits or (config.model.bits if loaded.is_peft else None),
        "quant_type": config.model.quant_type if loaded.quantized_bits == 4 else None,
        "double_quant": bool(config.model.double_quant) if loaded.quantized_bits == 4 else None,
        "compute_dtype": "bfloat16" if args.bf16 else ("float16" if args.fp16 else "float32"),
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


def run_training(config: TrainConfig) -> TrainResult:
    """Train as configured, resume when possible, then run the post-training actions."""
    import torch  # noqa: F401 - fail early and clearly if torch is missing

    from .data.pipeline import prepare_datasets
    from .plugins import get_registry

    if not config.run.output_dir:
        raise ConfigError("--output_dir is required")
    if not config.model.model_name_or_path:
        raise ConfigError("--model_name_or_path is required")
    if not config.data.dataset:
        raise ConfigError("--dataset is required")
    working_dir = Path(config.working_dir)
    main = _rank() == 0

    done = read_completed(working_dir)
    if done is not None:
        changed = _changed_options(done, config)
        return TrainResult(output_dir=config.run.output_dir, working_dir=str(working_dir),
                           merged_output_dir=config.run.merged_output_dir,
                           global_step=int(done.get("global_step", 0) or 0), metrics=done.get("metrics", {}),
                           final_loss=done.get("final_loss"),
                           already_complete=True, outputs=done.get("outputs", {}), actions=done.get("actions", []),
                           is_main_process=main,
                           notes=[f"note: options differ from the completed run: {', '.join(changed)}; use a new "
                                  "--working_dir (or delete the marker) to train with them"] if changed else [])

    registry = get_registry()
    loader = select_loader(config)
    actions = select_actions(config, registry)  # fail on a misspelt action before training
    if config.training.get("report_to") and "wandb" in str(config.training.get("report_to")):
        os.environ.setdefault("WANDB_DIR", str(working_dir))
    if main:
        working_dir.mkdir(parents=True, exist_ok=True)

    args = config.training_arguments(**_training_overrides(config))
    main = args.process_index == 0
    for message in config.warnings:
        _say(f"warning: {message}", main=main)

    if args.deepspeed:
        _init_deepspeed_comm()
    from transformers import set_seed

    set_seed(args.seed)  # before the model: LoRA's random init must be reproducible
    loaded = loader.load(config)
    model, tokenizer = loaded.model, loaded.tokenizer

    with args.main_process_first(desc="preparing the dataset"):
        prepared = prepare_datasets(config, tokenizer, rejects_dir=str(working_dir) if main else None)
    if prepared.eval is None or len(prepared.eval) == 0:
        if args.eval_strategy != "no":
            _say("no eval split (--eval_dataset_size 0 or too little data): evaluation is off", main=main)
        _disable_eval(args)
        eval_dataset = None
    else:
        eval_dataset = prepared.eval
    if len(prepared.train) == 0:
        raise AiroError("no training examples left after preparing the data; see the data report")

    explicit_resume = config.training.get("resume_from_checkpoint")
    resume, incomplete = find_resume_checkpoint(working_dir)
    if explicit_resume:
        resume = Path(explicit_resume)
    steps, _ = _planned_steps(len(prepared.train), args)

    CheckpointMarker, TokensPerSecond = _callbacks()
    from transformers import Trainer
    from transformers.trainer_callback import ProgressCallback

    tps = TokensPerSecond()
    trainer = Trainer(model=model, args=args, train_dataset=prepared.train, eval_dataset=eval_dataset,
                      data_collator=PaddingCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                      callbacks=[CheckpointMarker(), tps])
    tps.bar_owner = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ProgressCallback)), None)

    if main:
        for line in _summary_lines(config, loader.name, loaded, prepared, args, steps, resume):
            print(f"[airo] {line}", flush=True)
        for line in prepared.report.summary_lines():
            print(f"[airo] {line}", flush=True)
        if incomplete and not explicit_resume:
            _say("removing incomplete checkpoint(s) left by an interrupted save: "
                 + ", ".join(p.name for p in incomplete))
    _barrier()
    if main and not explicit_resume:
        for path in incomplete:
            shutil.rmtree(path, ignore_errors=True)
    _barrier()

    if resume is not None:
        state_file = resume / "trainer_state.json"
        step = json.loads(state_file.read_text()).get("global_step") if state_file.is_file() else "?"
        _say(f"resuming from {resume} (step {step} of {steps})", main=main)
    train_output = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    metrics = dict(train_output.metrics)

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
                         actions=[a.name for a in actions], is_main_process=main,
                         final_loss=_last_logged_loss(trainer.state.log_history, metrics))
    if main:
        ctx = TrainContext(config=config, model=trainer.model if loaded.is_peft else _unwrap(trainer),
                           tokenizer=tokenizer, template=prepared.template, output_dir=output_dir,
                           working_dir=str(working_dir), adapter_dir=output_dir if loaded.is_peft else None,
                           is_main_process=True, trainer=trainer, report=prepared.report, loaded=loaded,
                           state_dict=state_dict,
                           info=_training_info(config, loaded, prepared, loader.name, args))
        ctx.info["global_step"] = trainer.state.global_step
        for action in actions:
            _say(f"post-training action: {action.name}")
            action.run(ctx)
        result.outputs = dict(ctx.outputs)
        _write_json(working_dir / COMPLETED_FILE, {
            "global_step": trainer.state.global_step, "output_dir": output_dir,
            "merged_output_dir": config.run.merged_output_dir, "outputs": result.outputs,
            "actions": result.actions, "metrics": metrics, "final_loss": result.final_loss,
            "resumed_from": result.resumed_from, "config": _jsonable(config.to_dict()),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    # No barrier here: the other ranks may exit while rank 0 saves and merges (which can take
    # longer than the collective timeout for a big model).
    return result


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))


def _changed_options(done: dict[str, Any], config: TrainConfig) -> list[str]:
    before = done.get("config")
    if not isinstance(before, dict):
        return []
    now = _jsonable(config.to_dict())
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


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
    with atomic_directory(out_path) as tmp:
        model.save_pretrained(str(tmp), max_shard_size=max_shard_size)
        tokenizer.save_pretrained(str(tmp))
        config_file = tmp / "config.json"
        data = json.loads(config_file.read_text(encoding="utf-8"))
        if data.pop("quantization_config", None) is not None:
            config_file.write_text(json.dumps(data, indent=2), encoding="utf-8")
        _write_json(tmp / "airo_merge.json", {"base": str(base), "adapter": str(adapter_path), "method": method,
                                               "dtype": dtype_name, "training": info})
    return MergeResult(out=str(out_path), base=str(base), adapter=str(adapter_path), method=method,
                       dtype=dtype_name, notes=notes)
