"""airo's own options (model, data, run), the seed's training defaults, and the seed flags
renamed or retired since. Plugins declare theirs with ``register_options``."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any


# The longest sequence any option may ask for, in tokens (16M: beyond every model's context).
MAX_TOKENS = 2 ** 24


def _f(default, help: str, **kw):
    """A field with its help and its constraint (``min``, ``max``, ``above``, ``below``,
    ``choices``, ``registry``...: see ``flags.Constraint``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelArgs:
    model_name_or_path: str | None = _f(None, "Base model: a local folder or a Hub name.")
    tokenizer_name_or_path: str | None = _f(None, "Tokenizer folder, when it differs from the model.")
    trust_remote_code: bool = _f(False, "Allow model code from the checkpoint's repository.")
    loader: str = _f("auto", "Model loader plugin (`airo list loaders`); auto: the one whose plugin says it "
                             "applies to this config.", registry="loaders", extra=["auto"])
    attn_implementation: str | None = _f(None, "eager, sdpa or flash_attention_2 (default: sdpa).")
    use_flash_attention_2: bool = _f(False, "Seed flag: same as --attn_implementation flash_attention_2.")
    tokenizer_patches: str = _f("auto", "Tokenizer patches to apply: auto (those that detect their model), "
                                        "none, or a comma list (e.g. llama1).", registry="patches",
                                extra=["auto", "none"], many=True)
    pad_token: str | None = _f(None, "Override the pad token (llama default: the unk token).")
    eos_token: str | None = _f(None, "Override the EOS token.")
    bos_token: str | None = _f(None, "Override the BOS token.")
    unk_token: str | None = _f(None, "Override the unk token.")


@dataclass
class DataArgs:
    dataset: str | None = _f(None, "Data file (.jsonl .json .parquet .csv .tsv), a saved `datasets` folder, "
                                   "an `airo preprocess` output folder, or a Hub dataset name.")
    dataset_format: str = _f("airoboros", "Dataset format plugin (`airo list formats`).", registry="formats")
    prompt_template: str | None = _f(None, "Prompt template plugin (`airo list templates`); default: the format's.",
                                     registry="templates")
    model_max_len: int = _f(2048, "Longest training example in tokens.", min=16, max=MAX_TOKENS)
    eval_dataset_size: float = _f(0.02, "Eval split: below 1 a fraction, 1 or more a count, 0 none.",
                                  min=0, whole_from_1=True, accepted="a fraction below 1, a count, or 0")
    train_on: str = _f("auto", "Which tokens are trained: last_reply, all_replies (every assistant turn in one "
                               "example), or auto (last_reply with the reference tokenization for templates that "
                               "offer it, else all_replies).", choices=["auto", "last_reply", "all_replies"])
    train_on_source: bool = _f(False, "Train on every token, prompts included.")
    expand_conversations: bool = _f(False, "Emit one example per assistant turn (the seed's expansion).")
    include_sources: str = _f("ALL", "Comma list of record `source` values to keep; ALL keeps everything.")
    skip_excess_length: bool = _f(True, "Drop (and report) examples longer than the model allows.")
    truncate_excess: bool = _f(False, "Keep the start of an example longer than --model_max_len instead of dropping "
                                      "it (the same as --skip_excess_length false).")
    sample_packing: bool = _f(False, "Pack several examples into each --model_max_len row (no padding); each "
                                     "example still attends only to itself. Eval stays unpacked.")
    group_by_length: bool = _f(False, "Batch examples of similar length together (less padding; the seed's "
                                      "flag, transformers' --train_sampling_strategy group_by_length).")
    on_bad_record: str = _f("error", "error: stop at the first bad record; skip: count it, write it to "
                                     "rejects.jsonl and go on.", choices=["error", "skip"])
    max_train_samples: int | None = _f(None, "Keep only the first N training examples.", min=1)
    max_eval_samples: int | None = _f(None, "Keep only the first N eval examples.", min=1)
    dataset_cache_dir: str | None = _f(None, "Where tokenized datasets are cached (default: "
                                             "$AIRO_CACHE or ~/.cache/airo).")
    datasets: list | None = _f(None, "Several datasets mixed into one run (YAML: a list of entries with path, "
                                     "format, template, template_choice, train_on, split, eval_size, max_records "
                                     "and one of weight / records / epochs; see the README). --dataset given "
                                     "several times is the short form.")
    dedup: str = _f("none", "Remove duplicate examples across and within the datasets: prompt (same normalised "
                            "prompt), conversation (same whole conversation) or none. The first in list order "
                            "wins.", choices=["none", "prompt", "conversation"])
    decontaminate: str | None = _f(None, "Comma list of benchmark question files (or folders of them: .jsonl "
                                         ".json .csv .tsv .parquet, e.g. MMLU's); training records containing one "
                                         "are removed and reported.")
    preprocessing_num_workers: int | None = _f(None, "Processes that render and tokenize the data (default: the "
                                                     "cores available); any number gives the same examples.",
                                               min=1, max=1024, resumable=True)


@dataclass
class RunArgs:
    output_dir: str | None = _f(None, "Final artifacts: the adapter, or the model of a full fine-tune.")
    working_dir: str | None = _f(None, "Checkpoints and logs (default: OUTPUT_DIR-checkpoints).")
    post_train_actions: str = _f("auto", "auto, none, or a comma list; `auto,NAME` adds to the defaults.",
                                 registry="actions", extra=["auto", "none"], many=True)
    objective: str = _f("sft", "Training objective (`airo list objectives`): sft, or a preference objective "
                               "(dpo, ipo, simpo, orpo, kto) with a preference dataset format.", registry="objectives")
    chunked_loss: str = _f("auto", "Compute the loss over chunks of tokens without the full-vocabulary logits "
                                   "(less memory, the same loss): auto where it is exact for the model, true, or "
                                   "false.", choices=["auto", "true", "false"], resumable=True)
    verbose: bool = _f(False, "Show the libraries' warnings and progress bars, on every rank (default: airo's "
                              "lines, from rank 0).", resumable=True)


# The seed's defaults (upstream QLoRA's) where they differ from TrainingArguments'.
SEED_TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "max_grad_norm": 0.3,
    "lr_scheduler_type": "constant",
    # transformers 5 folded warmup_ratio into warmup_steps: a float below 1 is a ratio.
    "warmup_steps": 0.03,
    "weight_decay": 0.0,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 16,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 250,
    "save_total_limit": 40,
    "neftune_noise_alpha": 5.0,
    "remove_unused_columns": False,
    "report_to": "none",
    "optim": "auto",
}

# TrainingArguments fields whose default airo derives from the run (core/training/arguments.py
# sets them); `--help-all` shows these instead of transformers' own default.
DERIVED_DEFAULTS: dict[str, str] = {
    "eval_strategy": "--save_strategy's steps or epoch when there is an eval split (--eval_dataset_size "
                     "above 0), else 'no'",
    "eval_steps": "--save_steps when evaluating by steps",
    "use_cpu": "True when no CUDA device is present",
    "activation_checkpointing": "--gradient_checkpointing (the seed's spelling)",
    "train_sampling_strategy": "group_by_length with --group_by_length",
}

# What each TrainingArguments field accepts beyond its type (``flags.Constraint``); the
# choices of name-valued fields come from transformers itself (their enums and metadata).
# A learning rate above 1 or a weight decay above 1 (AdamW multiplies the weights by
# 1 - lr * weight_decay) is never a fine-tuning setting: it diverges, so it fails here.
_SEED = {"min": 0, "max": 2 ** 32 - 1}  # numpy's seeds
_STEPS = {"above": 0, "whole_from_1": True}
TRAINING_CONSTRAINTS: dict[str, dict[str, Any]] = {
    "learning_rate": {"above": 0, "max": 1},
    "per_device_train_batch_size": {"min": 1},
    "per_device_eval_batch_size": {"min": 1},
    "gradient_accumulation_steps": {"min": 1},
    "eval_accumulation_steps": {"min": 1},
    "num_train_epochs": {"above": 0, "max": 1e6},
    "max_steps": {"min": -1, "accepted": "-1 or 0 (the epochs decide) or a number of steps"},
    "warmup_steps": {"min": 0, "whole_from_1": True},
    "weight_decay": {"min": 0, "max": 1},
    "adam_beta1": {"min": 0, "below": 1},
    "adam_beta2": {"min": 0, "below": 1},
    "adam_epsilon": {"min": 0},
    "max_grad_norm": {"min": 0},
    "label_smoothing_factor": {"min": 0, "max": 1},
    "neftune_noise_alpha": {"min": 0, "max": 100},
    "torch_empty_cache_steps": {"min": 1},
    "logging_steps": _STEPS,
    "save_steps": _STEPS,
    "eval_steps": {"min": 0, "whole_from_1": True},
    "eval_delay": {"min": 0},
    "save_total_limit": {"min": 0},
    "seed": _SEED,
    "data_seed": _SEED,
    "dataloader_num_workers": {"min": 0, "max": 1024},
    "dataloader_prefetch_factor": {"min": 1, "max": 1024},
    "ddp_bucket_cap_mb": {"min": 1},
    "ddp_timeout": {"min": 1, "max": 2 ** 31 - 1},
    "local_rank": {"min": -1},
    "deepspeed": {"path": "file"},
    "fsdp_config": {"path": "file"},
    "accelerator_config": {"path": "file"},
}

# The packages each --report_to target needs (as transformers looks for them): a target
# whose package is missing fails before the model loads, not when the Trainer starts.
REPORT_PACKAGES: dict[str, tuple[str, ...]] = {
    "wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",),
    "clearml": ("clearml",), "comet_ml": ("comet_ml",), "azure_ml": ("azureml",), "mlflow": ("mlflow",),
    "dagshub": ("dagshub",), "neptune": ("neptune",), "codecarbon": ("codecarbon",), "flyte": ("flytekit",),
    "dvclive": ("dvclive",), "swanlab": ("swanlab",),
}

# Seed flags renamed since.
ALIASES = {"evaluation_strategy": "eval_strategy", "warmup_ratio": "warmup_steps"}

# Seed flags that no longer do anything: accepted, with the reason, so old command lines run.
OBSOLETE = {
    # the generation flags airo's predictions take are options of the built-in `predict` plugin
    "num_beam_groups": "group beam search is not among the predictions' decoding options",
    "penalty_alpha": "contrastive search is not among the predictions' decoding options",
    "diversity_penalty": "group beam search is not among the predictions' decoding options",
    "sample_generate": "predictions are generated with --do_predict and the generation flags",
    "use_cache": "the KV cache is off while training anyway",
    "source_max_len": "lengths are governed by --model_max_len",
    "target_max_len": "lengths are governed by --model_max_len",
    "use_auth_token": "use `hf auth login` or HF_TOKEN",
    "max_memory_MB": "accelerate places the model",
    "do_train": "airo train always trains",
    "max_steps_per_epoch": "not supported",
}

SECTIONS = {"model": ModelArgs, "data": DataArgs, "run": RunArgs}


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[-_\s.]+", name.lower()) if w]


def _abbreviates(words: list[str], other: list[str]) -> bool:
    """As many words, each a prefix of the other's at the same place or the other way round
    (``lora_rank`` ~ ``lora_r``, ``grad_accum_steps`` ~ ``gradient_accumulation_steps``); or
    fewer words, each the start of one in a run of ``other``'s (``epochs`` ~
    ``num_train_epochs``, ``batch_size`` ~ ``per_device_train_batch_size``)."""
    if not words or len(words) > len(other):
        return False
    if len(words) == len(other):
        return all(a.startswith(b) or b.startswith(a) for a, b in zip(words, other))
    if len(words) == 1 and len(words[0]) < 3:
        return False
    return any(all(a.startswith(b) for a, b in zip(other[start:start + len(words)], words))
               for start in range(len(other) - len(words) + 1))


def closest(name: str, candidates) -> str | None:
    """The candidate ``name`` most likely meant: the same letters but for case, dashes and
    underscores; else an abbreviation of one (or the name abbreviated); else the closest
    spelling (difflib)."""
    candidates = [str(c) for c in candidates]
    flat = re.sub(r"[-_\s]", "", name.lower())
    for c in candidates:
        if re.sub(r"[-_\s]", "", c.lower()) == flat:
            return c
    spelt = {c.lower().replace("-", "_"): c for c in candidates}
    near = difflib.get_close_matches(name.lower().replace("-", "_"), list(spelt), n=1, cutoff=0.9)
    if near:  # one typo in a long name
        return spelt[near[0]]
    words = _words(name)
    abbreviations = [c for c in candidates if _abbreviates(words, _words(c))]
    if abbreviations:
        # as many words as the name first (lora_rank: lora_r), then the first listed (the
        # common one: batch_size -> per_device_train_batch_size, adamw -> adamw_torch)
        return min(abbreviations, key=lambda c: (len(words) != len(_words(c)), candidates.index(c)))
    match = difflib.get_close_matches(name.lower().replace("-", "_"), list(spelt), n=1, cutoff=0.6)
    return spelt[match[0]] if match else None


def suggest(name: str, candidates, *, flag: bool = False) -> str:
    """`` Did you mean 'lora_r'?`` (or ``--lora_r`` for a flag), or "" when nothing is close."""
    match = closest(name, candidates)
    if match is None:
        return ""
    return f" Did you mean --{match}?" if flag else f" Did you mean {match!r}?"
