"""airo's own options (model, data, run), the seed's training defaults, and the seed flags
renamed or retired since. Plugins declare theirs with ``register_options``."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelArgs:
    model_name_or_path: str | None = _f(None, "Base model: a local folder or a Hub name.")
    tokenizer_name_or_path: str | None = _f(None, "Tokenizer folder, when it differs from the model.")
    trust_remote_code: bool = _f(False, "Allow model code from the checkpoint's repository.")
    loader: str = _f("auto", "Model loader plugin (`airo list loaders`); auto: the one whose plugin says it "
                             "applies to this config.")
    attn_implementation: str | None = _f(None, "eager, sdpa or flash_attention_2 (default: sdpa).")
    use_flash_attention_2: bool = _f(False, "Seed flag: same as --attn_implementation flash_attention_2.")
    tokenizer_patches: str = _f("auto", "Tokenizer patches to apply: auto (those that detect their model), "
                                        "none, or a comma list (e.g. llama1).")
    pad_token: str | None = _f(None, "Override the pad token (llama default: the unk token).")
    eos_token: str | None = _f(None, "Override the EOS token.")
    bos_token: str | None = _f(None, "Override the BOS token.")
    unk_token: str | None = _f(None, "Override the unk token.")


@dataclass
class DataArgs:
    dataset: str | None = _f(None, "Data file (.jsonl .json .parquet .csv .tsv), a saved `datasets` folder, "
                                   "an `airo preprocess` output folder, or a Hub dataset name.")
    dataset_format: str = _f("airoboros", "Dataset format plugin (`airo list formats`).")
    prompt_template: str | None = _f(None, "Prompt template plugin (`airo list templates`); default: the format's.")
    model_max_len: int = _f(2048, "Longest training example in tokens.")
    eval_dataset_size: float = _f(0.02, "Eval split: below 1 a fraction, 1 or more a count, 0 none.")
    train_on: str = _f("auto", "Which tokens are trained: last_reply, all_replies (every assistant turn in one "
                               "example), or auto (last_reply with the reference tokenization for templates that "
                               "offer it, else all_replies).")
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
                                     "rejects.jsonl and go on.")
    max_train_samples: int | None = _f(None, "Keep only the first N training examples.")
    max_eval_samples: int | None = _f(None, "Keep only the first N eval examples.")
    dataset_cache_dir: str | None = _f(None, "Where tokenized datasets are cached (default: "
                                             "$AIRO_CACHE or ~/.cache/airo).")


@dataclass
class RunArgs:
    output_dir: str | None = _f(None, "Final artifacts: the adapter, or the model of a full fine-tune.")
    working_dir: str | None = _f(None, "Checkpoints and logs (default: OUTPUT_DIR-checkpoints).")
    post_train_actions: str = _f("auto", "auto, none, or a comma list; `auto,NAME` adds to the defaults.")


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


def suggest(name: str, candidates) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""
