"""``TrainingArguments`` for a run: the seed's defaults and names mapped onto transformers 5."""

from __future__ import annotations

import math
from typing import Any

from ..config import TrainConfig


def training_overrides(config: TrainConfig) -> dict[str, Any]:
    import torch

    from ..data.packing import check_packing_options

    check_packing_options(config)  # before the model loads
    t = config.training
    overrides: dict[str, Any] = {}
    if "include_num_input_tokens_seen" not in config.explicit:
        overrides["include_num_input_tokens_seen"] = "non_padding"
    # The seed's --gradient_checkpointing is transformers 5's activation_checkpointing.
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if t.get(old) is not None:
            if t.get(new) is None:
                overrides[new] = t[old]
            overrides[old] = None
    if config.gradient_checkpointing and not (t.get("activation_checkpointing_kwargs")
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
    if config.data.group_by_length and "train_sampling_strategy" not in config.explicit:
        # transformers 5 replaced the seed's TrainingArguments.group_by_length with this
        overrides["train_sampling_strategy"] = "group_by_length"
    # airo rotates checkpoints itself, counting only complete (marked) ones: the Trainer's
    # rotation runs before the marker and could delete the last complete checkpoint.
    overrides["save_total_limit"] = None
    return overrides


def disable_eval(args) -> None:
    from transformers.trainer_utils import IntervalStrategy

    args.eval_strategy = IntervalStrategy.NO
    args.do_eval = False
    if getattr(args, "load_best_model_at_end", False):
        args.load_best_model_at_end = False


def planned_steps(n_examples: int, args) -> tuple[int, int]:
    """(optimizer steps, updates per epoch) as the Trainer will compute them. With
    --sample_packing ``n_examples`` is the number of packed rows: the Trainer batches rows."""
    batches = math.ceil(n_examples / max(1, args.per_device_train_batch_size * args.world_size))
    per_epoch = max(batches // args.gradient_accumulation_steps
                    + int(batches % args.gradient_accumulation_steps > 0), 1)
    if args.max_steps and args.max_steps > 0:
        return args.max_steps, per_epoch
    return int(math.ceil(args.num_train_epochs * per_epoch)), per_epoch


def reports_to(config: TrainConfig, name: str) -> bool:
    """Whether --report_to sends to ``name`` (directly or through ``all``)."""
    value = config.training.get("report_to")
    if value is None:
        return False
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
    items = {str(i).strip().lower() for i in items}
    return name in items or "all" in items


def init_deepspeed_comm() -> None:
    """On CPU (use_cpu) accelerate sets up torch.distributed but not DeepSpeed's comm layer;
    ZeRO-3's zero.Init (inside from_pretrained) then sees a world of 1. Attach it."""
    try:
        import deepspeed
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized() and not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=dist.get_backend())


def resolve_optim(config: TrainConfig, loaded) -> str | None:
    """``--optim auto`` once the model is loaded: paged_adamw_32bit for an adapter on a 4/8-bit
    base on CUDA (the seed's), else None (TrainingArguments' adamw_torch stays)."""
    if str(config.training.get("optim") or "auto") != "auto":
        return None
    import torch

    if torch.cuda.is_available() and loaded.is_peft and loaded.quantized_bits in (4, 8):
        return "paged_adamw_32bit"
    return None
