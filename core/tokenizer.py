"""Loading and saving the tokenizer: the one place its special tokens are decided."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .errors import ConfigError


def _patches_for(config: TrainConfig):
    from .plugins import get_registry

    return get_registry().select("patches", config.model.tokenizer_patches, config, option="--tokenizer_patches")


_TOKENIZER_OPTIONS = ("tokenizer_name_or_path", "model_name_or_path", "tokenizer_patches", "trust_remote_code",
                      "pad_token", "eos_token", "bos_token", "unk_token")


def load_tokenizer(config: TrainConfig) -> Any:
    """AutoTokenizer for the model, with tokenizer patches and token overrides applied.

    The pad token defaults to the unk token (llama-2's convention; padding with EOS
    would make EOS look like padding to tools that mask by token id).

    Loaded once per config: the run tokenizes its data before the model loads, and the
    loader's call returns that same tokenizer, so the data and the model agree by
    construction. Changing a tokenizer option on the config loads anew.
    """
    key = tuple(repr(getattr(config.model, name, None)) for name in _TOKENIZER_OPTIONS)
    cached = config.__dict__.get("_loaded_tokenizer")
    if cached is not None and cached[0] == key:
        return cached[1]
    tokenizer = _load_tokenizer(config)
    config.__dict__["_loaded_tokenizer"] = (key, tokenizer)
    return tokenizer


def _load_tokenizer(config: TrainConfig) -> Any:
    from transformers import AutoTokenizer

    source = config.model.tokenizer_name_or_path or config.model.model_name_or_path
    if not source:
        raise ConfigError("--model_name_or_path is required (the tokenizer comes from it)")
    patches = _patches_for(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError, RecursionError) as exc:
        if not patches:
            raise ConfigError(f"cannot load the tokenizer from {source!r}: {exc}") from None
        # Broken tokenizer files (llama-1 conversions): the patches rebuild the tokenizer.
        tokenizer = None
    for patch in patches:
        tokenizer = patch.apply(tokenizer, config)
    overrides = {k: getattr(config.model, k) for k in ("pad_token", "eos_token", "bos_token", "unk_token")
                 if getattr(config.model, k)}
    if overrides:
        tokenizer.add_special_tokens(overrides)
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def sync_special_tokens(model, tokenizer) -> list[str]:
    """Make a model agree with its tokenizer: embeddings grown for added special tokens, and
    the pad/bos/eos ids in its config and generation config. Returns notes for the user."""
    notes = []
    embeddings = model.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.weight.shape[0]:
        old = embeddings.weight.shape[0]
        model.resize_token_embeddings(len(tokenizer))
        notes.append(f"resized the token embeddings from {old} to {len(tokenizer)} for the added special tokens")
    for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is None:
            continue
        for cfg in (model.config, getattr(model, "generation_config", None)):
            if cfg is not None and getattr(cfg, attr, None) != value:
                setattr(cfg, attr, value)
    return notes


def applied_patches(config: TrainConfig) -> list[str]:
    return [p.name for p in _patches_for(config)]


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
