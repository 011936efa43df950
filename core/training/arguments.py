"""``TrainingArguments`` for a run: the seed's defaults and names mapped onto transformers 5."""

from __future__ import annotations

import math
from typing import Any

from ..config import TrainConfig
# the data loader's arithmetic is packing's: the run counts its steps by the same rules
from ..data.packing import batches_per_process, rows_per_process, rows_per_round, updates_per_epoch  # noqa: F401
from ..errors import ConfigError


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
    overrides.update(fsdp_shorthand(config))
    # airo rotates checkpoints itself, counting only complete (marked) ones: the Trainer's
    # rotation runs before the marker and could delete the last complete checkpoint.
    overrides["save_total_limit"] = None
    return overrides


_FSDP_WORDS = ("full_shard", "shard_grad_op", "offload", "auto_wrap")


def fsdp_shorthand(config: TrainConfig) -> dict[str, Any]:
    """``--fsdp full_shard`` (or ``true``; ``shard_grad_op``, ``offload``, ``auto_wrap`` may be added)
    without ``--fsdp_config``: FSDP2 sharding each decoder layer (the model's ``_no_split_modules``
    class, accelerate's default wrap policy), resharding after forward unless ``shard_grad_op``,
    CPU offload with ``offload``, checkpoints sharded with torch.distributed.checkpoint, and
    --gradient_checkpointing as FSDP's activation checkpointing of those layers. A
    user's ``--fsdp_config`` wins: their --fsdp words are then passed on as given."""
    import torch

    from .distributed import fsdp_requested

    t = config.training
    value = t.get("fsdp")
    if value is None:
        return {}
    if not fsdp_requested(value):
        return {"fsdp": None}  # `--fsdp false`: the Trainer would read the word as an option
    words = [str(w).lower() for w in (value if isinstance(value, (list, tuple)) else str(value).split())]
    words = ["full_shard" if w in ("true", "yes", "1", "on") else w for w in words]
    unknown = [w for w in words if w not in _FSDP_WORDS]
    if unknown:
        raise ConfigError(f"--fsdp {value}: {', '.join(unknown)} is not an FSDP2 option (FSDP1's sharding "
                          f"strategies are not offered); expected true or any of {', '.join(_FSDP_WORDS)} "
                          "(e.g. --fsdp full_shard, --fsdp \"full_shard offload\")")
    if "full_shard" in words and "shard_grad_op" in words:
        raise ConfigError(f"--fsdp {value}: full_shard and shard_grad_op are two sharding strategies; pick one")
    if "offload" in words and not torch.cuda.is_available():
        raise ConfigError(f"--fsdp {value}: offload moves the shards to CPU memory (pinned, for a GPU to fetch), and "
                          "this run has no GPU: its weights are in CPU memory already. Leave offload out")
    if t.get("fsdp_config"):
        return {"fsdp": True, "fsdp_config": _with_fsdp_words(t["fsdp_config"], words)}
    overrides: dict[str, Any] = {"fsdp": True, "fsdp_config": {
        "version": 2, "reshard_after_forward": "shard_grad_op" not in words, "cpu_offload": "offload" in words,
        "state_dict_type": "SHARDED_STATE_DICT"}}
    if config.gradient_checkpointing:
        # FSDP's own activation checkpointing around each wrapped layer: the model's (the
        # Trainer's argument) costs one more all-gather per layer in the backward pass
        overrides["fsdp_config"]["activation_checkpointing"] = True
        overrides.update(activation_checkpointing=False, gradient_checkpointing=None)
    return overrides


def _with_fsdp_words(spec: Any, words: list[str]) -> dict[str, Any]:
    """A user's --fsdp_config (a JSON file or a dict) with what their --fsdp words say where it
    says nothing (as transformers reads the words, without its deprecation of string values)."""
    import json
    from pathlib import Path

    if not isinstance(spec, dict):
        try:
            spec = json.loads(Path(spec).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--fsdp_config {spec}: cannot read it as JSON ({exc})") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"--fsdp_config: expected a JSON object of FSDP settings, got {type(spec).__name__}")
    merged = {key[5:] if key.startswith("fsdp_") else key: value for key, value in spec.items()}
    if "full_shard" in words or "shard_grad_op" in words:
        merged.setdefault("reshard_after_forward", "shard_grad_op" not in words)
    if "offload" in words:
        merged.setdefault("cpu_offload", True)
    return merged


def disable_eval(args) -> None:
    from transformers.trainer_utils import IntervalStrategy

    args.eval_strategy = IntervalStrategy.NO
    args.do_eval = False
    if getattr(args, "load_best_model_at_end", False):
        args.load_best_model_at_end = False


def planned_steps(n_examples: int, args) -> tuple[int, int]:
    """(optimizer steps, updates per epoch) as the Trainer will compute them. With
    --sample_packing ``n_examples`` is the number of packed rows: the Trainer batches rows.
    A last partial accumulation still makes an update (transformers' rule)."""
    per_epoch = updates_per_epoch(n_examples, args)
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


def resolve_optim(config: TrainConfig, loaded) -> str | None:
    """``--optim auto`` once the model is loaded: paged_adamw_32bit for an adapter on a 4/8-bit
    base on CUDA (the seed's), else None (TrainingArguments' adamw_torch stays)."""
    if str(config.training.get("optim") or "auto") != "auto":
        return None
    import torch

    if torch.cuda.is_available() and loaded.is_peft and loaded.quantized_bits in (4, 8):
        return "paged_adamw_32bit"
    return None
