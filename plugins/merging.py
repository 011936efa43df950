"""Merging a LoRA adapter into its base: the one implementation behind the ``merge`` plugin
(``airo merge``, the merge action) and the GGUF export, which merges before it converts.

QLoRA adapters learned corrections to the *4-bit* base. The default ``dequantize`` path
merges them into the base as training saw it (each layer through the same 4-bit round
trip), which is what the adapter was trained against; ``direct`` merges into the stored
16-bit weights. A library module shared by plugins, not a plugin itself.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from airo.core import (KIND_MERGED, ConfigError, atomic_directory, check_inputs_outside, check_replaceable,
                       check_separate, write_json)
from airo.plugins.model_card import write_card
from airo.plugins.quantization import dequantize_like_training


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


_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
           "float32": "float32", "fp32": "float32"}


def read_training_info(adapter: str | os.PathLike) -> dict[str, Any]:
    from airo.core import TRAINING_INFO_FILE

    path = Path(adapter) / TRAINING_INFO_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return {}
    return {}


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
    adapter_path = Path(adapter)
    info = read_training_info(adapter_path) if (adapter_path / "adapter_config.json").is_file() else {}
    base = check_merge_folders(base, adapter, out, info)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from airo.core import base_model_path, save_tokenizer, sync_special_tokens
    from airo.core import say as print_line

    say = log or print_line
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
    # training added special tokens (e.g. --pad_token): the adapter holds the grown embeddings
    notes += sync_special_tokens(model, tokenizer)
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
    sync_special_tokens(model, tokenizer)  # the ids, as the training tokenizer says
    model.config.use_cache = True
    model.config.dtype = torch_dtype

    out_path = Path(out)
    with atomic_directory(out_path, kind=KIND_MERGED, what="merge output folder") as tmp:
        model.save_pretrained(str(tmp), max_shard_size=max_shard_size)
        save_tokenizer(tokenizer, tmp)
        config_file = tmp / "config.json"
        data = json.loads(config_file.read_text(encoding="utf-8"))
        if data.pop("quantization_config", None) is not None:
            config_file.write_text(json.dumps(data, indent=2), encoding="utf-8")
        write_json(tmp / "airo_merge.json", {"base": base_model_path(str(base)),
                                               "adapter": str(adapter_path.resolve()), "method": method,
                                               "dtype": dtype_name, "training": info})
        write_card(tmp, {**info, "merge": {"method": method, "dtype": dtype_name}}, kind="merged",
                   name=out_path.name, chat_template=tokenizer.chat_template)
    return MergeResult(out=str(out_path), base=str(base), adapter=str(adapter_path), method=method,
                       dtype=dtype_name, notes=notes)


def check_merge_folders(base: str | None, adapter: str | os.PathLike, out: str | os.PathLike,
                        info: dict[str, Any] | None = None) -> str:
    """The base to merge into, once the folders are checked (in seconds, nothing loaded):
    ``adapter`` is a LoRA adapter folder, ``out`` is neither the adapter nor the base nor
    inside or around them, and is new, empty or a merged model airo wrote (never a working
    dir, a checkpoint, an adapter or a user's folder; see ``check_replaceable``)."""
    adapter_path = Path(adapter)
    config_file = adapter_path / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"{str(adapter)!r} is not a LoRA adapter folder (no adapter_config.json)")
    try:
        peft_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{config_file} is not readable JSON ({exc})") from None
    info = info or {}
    base = base or info.get("base_model") or (peft_config.get("base_model_name_or_path")
                                              if isinstance(peft_config, dict) else None)
    if not base:
        raise ConfigError("the adapter does not say which base model it belongs to; pass --base")
    named = [("--out", out), ("--adapter", adapter_path)]
    if Path(base).is_dir():
        named.append(("--base", base))
    check_separate(named, allowed=(("--adapter", "--base"), ("--base", "--adapter")))
    check_inputs_outside([("--out", out)], [("--adapter", adapter_path), ("--base", base)])
    check_replaceable(out, kind=KIND_MERGED, what="merge output folder")
    return base
