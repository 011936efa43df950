"""The run summary printed before training, and the training record saved beside the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import TrainConfig
from .distributed import backend
from .folders import output_name


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


def plain(value) -> str:
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


def _attention(model_config) -> str:
    from .packed_attention import NAME

    impl = getattr(model_config, "_attn_implementation", None) or "default"
    return "sdpa, packed rows one example at a time" if impl == NAME else impl


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


def summary_lines(config, loader_name, loaded, prepared, args, steps, resume, outputs=(), packing=None) -> list[str]:
    trainable, total = _count_params(loaded.model)
    n_train = len(prepared.train)
    n_eval = len(prepared.eval) if prepared.eval is not None else 0
    tokens = prepared.report.tokens.get("train", 0)  # counted while tokenizing: no pass over the data
    trained = prepared.report.trained_tokens.get("train", 0)
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    alpha = args.neftune_noise_alpha
    neftune = (f"on, noise alpha {alpha:g}" + (" (the seed's default; --neftune_noise_alpha None turns it off)"
                                                if "neftune_noise_alpha" not in config.explicit else "")
               if alpha else "off")
    precision = precision_label(loaded, args)
    bits = loaded.quantized_bits
    lines = [
        "run summary",
        f"  model:            {config.model.model_name_or_path}",
        f"  loader:           {loader_name} ({'LoRA adapter' if loaded.is_peft else 'full fine-tune'}"
        + (f", {bits}-bit base" if loaded.is_peft and bits else "") + f", {precision})",
        f"  format/template:  {prepared.format_name} / {prepared.template_name}"
        + (f" (train on {prepared.train_on})" if getattr(prepared, "train_on", None) else ""),
        f"  trainable params: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)",
        f"  examples:         {n_train:,} train, {n_eval:,} eval"
        + (f" (eval every {args.eval_steps} steps)" if n_eval and args.eval_strategy == "steps"
           and args.eval_steps else ""),
        f"  tokens:           {tokens:,} train ({trained:,} trained on)",
        *([f"  packing:          {packing.summary()}"] if packing is not None else []),
        f"  steps:            {steps:,} ({args.num_train_epochs:g} epochs)" if not (args.max_steps and args.max_steps > 0)
        else f"  steps:            {steps:,} (--max_steps)",
        f"  batch:            {effective} effective = {args.per_device_train_batch_size} per device x "
        f"{args.gradient_accumulation_steps} accumulation x {args.world_size} process(es)",
        f"  optimizer:        {plain(args.optim)}, lr {args.learning_rate:g}, {plain(args.lr_scheduler_type)} schedule",
        f"  NEFTune:          {neftune}",
        f"  attention:        {_attention(loaded.model.config)}"
        + (", gradient checkpointing" if args.activation_checkpointing else ""),
    ]
    lines += backend(config.training).describe(args)  # DDP's processes, DeepSpeed's config and ZeRO stage
    lines.append(f"  working dir:      {config.working_dir}")
    for output in outputs:
        lines.append(f"  {output_name(output) + ':':<18}{output.path}")
    if resume is not None:
        lines.append(f"  resuming from:    {resume}")
    for note in loaded.notes:
        lines.append(f"  note: {note}")
    return lines


def base_model_path(name: str | None) -> str | None:
    """A local base model folder as an absolute path (so a merge works from anywhere)."""
    if name and Path(name).is_dir():
        return str(Path(name).resolve())
    return name


def training_info(config: TrainConfig, loaded, prepared, loader_name: str, args) -> dict[str, Any]:
    from ..version import __version__

    info: dict[str, Any] = {
        "airo_version": __version__,
        "base_model": base_model_path(config.model.model_name_or_path),
        "loader": loader_name,
        "peft": bool(loaded.is_peft),
        "bits": loaded.quantized_bits,
        "compute_dtype": "bfloat16" if args.bf16 else ("float16" if args.fp16 else "float32"),
        "weights_dtype": None if loaded.is_peft else _weights_dtype(loaded.model),
        "dataset_format": prepared.format_name,
        "prompt_template": prepared.template_name,
        "objective": config.run.objective,
    }
    info.update(loaded.info)  # what the loader knows: e.g. how the base was quantized
    return info


def last_logged_loss(history: list[dict[str, Any]], metrics: dict[str, Any]) -> float | None:
    """The last logged loss (averaged over ranks). Not ``train_loss``: under DDP transformers
    computes that from rank 0's share of the token-weighted loss only."""
    for entry in reversed(history or []):
        if "loss" in entry:
            return float(entry["loss"])
    return None
