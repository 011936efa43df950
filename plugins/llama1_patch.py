"""The llama-1 tokenizer patch (built-in plugin ``llama1_patch``).

The original llama-1 conversions (``decapoda-research/llama-*-hf`` and friends) shipped
tokenizer files with empty or wrong special tokens and the class name
``LLaMATokenizer``; transformers either fails to load them or loads a tokenizer with no
BOS/EOS. The airoboros fork told users to copy two fixed files over the checkpoint's own.
airo ships those files (``llama1-patch/tokenizer_config.json`` and
``llama1-patch/special_tokens_map.json`` next to this module, copy them if you like) and
applies them itself:

- explicitly with ``--llama1_tokenizer_patch`` (or ``--tokenizer_patches llama1``);
- automatically (``--tokenizer_patches auto``, the default) when :func:`detect` says
  the checkpoint is a llama-1 conversion with broken tokenizer files.

Detection rule (all must hold, so a healthy llama-1 or any llama-2/3 is left alone):

1. the model's ``config.json`` says ``model_type: llama`` and
   ``max_position_embeddings: 2048`` (llama-1's context; llama-2 has 4096);
2. its tokenizer files are broken: no ``tokenizer_config.json``, or the class name is the
   old ``LLaMATokenizer``, or one of the BOS/EOS/UNK tokens is missing or empty in
   ``tokenizer_config.json`` + ``special_tokens_map.json``.

No torch/transformers import at module level.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airo.core import hookimpl, read_json_dict

PATCH_DIR = Path(__file__).resolve().parent / "llama1-patch"
PATCH_FILES = ("tokenizer_config.json", "special_tokens_map.json")

# The spec's tokenizer settings (see shared spec, "The llama-1 tokenizer patch").
SETTINGS: dict[str, Any] = {
    "tokenizer_class": "LlamaTokenizer",
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<unk>",
    "model_max_length": 2048,
    "padding_side": "right",
    "clean_up_tokenization_spaces": False,
    # The seed's LlamaTokenizer behaved legacy=True (a space is added before text that
    # follows a special token: "</s>y" -> "</s>", "▁y"); transformers 5 defaults to False.
    "legacy": True,
}


def patch_files() -> dict[str, Path]:
    """The shipped replacement files, by name."""
    return {name: PATCH_DIR / name for name in PATCH_FILES}


def _token_text(value: Any) -> str:
    if isinstance(value, dict):  # AddedToken serialised as {"content": ...}
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _tokenizer_dir(config) -> Path | None:
    source = config.model.tokenizer_name_or_path or config.model.model_name_or_path
    if source and Path(source).is_dir():
        return Path(source)
    return None


def detect(config) -> bool:
    """True for a local llama-1 checkpoint whose tokenizer files are broken (rule above)."""
    model = config.model.model_name_or_path
    if not model or not Path(model).is_dir():
        return False  # hub names: ask for the patch explicitly
    model_config = read_json_dict(Path(model) / "config.json") or {}
    if model_config.get("model_type") != "llama" or model_config.get("max_position_embeddings") != 2048:
        return False
    tok_dir = _tokenizer_dir(config) or Path(model)
    tok_config = read_json_dict(tok_dir / "tokenizer_config.json")
    if tok_config is None:
        return True
    if str(tok_config.get("tokenizer_class", "")) == "LLaMATokenizer":
        return True
    special = dict(read_json_dict(tok_dir / "special_tokens_map.json") or {})
    merged = {**special, **{k: v for k, v in tok_config.items() if k.endswith("_token")}}
    return any(not _token_text(merged.get(k)) for k in ("bos_token", "eos_token", "unk_token"))


def _cache_root() -> Path:
    from airo.core import cache_home

    # the patched tokenizer files are needed even when the dataset cache is off
    return cache_home() or Path.home() / ".cache" / "airo"


def _patched_copy(tok_dir: Path) -> Path | None:
    """A folder holding the checkpoint's SentencePiece model and the patch files.

    It lives in the airo cache (keyed by the hash of the model file and the patch files)
    rather than a temp dir, because a tokenizer remembers where its vocabulary file is for
    ``save_pretrained``.
    """
    sp_model = tok_dir / "tokenizer.model"
    if not sp_model.is_file():
        return None
    h = hashlib.sha256(sp_model.read_bytes())
    for path in patch_files().values():  # a changed patch file must not reuse an old copy
        h.update(path.read_bytes())
    digest = h.hexdigest()[:16]
    out = _cache_root() / "llama1-patch" / digest
    if not (out / "tokenizer.model").is_file():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copy(sp_model, tmp / "tokenizer.model")
        for name, path in patch_files().items():
            shutil.copy(path, tmp / name)
        try:
            tmp.rename(out)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def apply(tokenizer, config):
    """Return a tokenizer with the llama-1 patch applied.

    With the checkpoint's ``tokenizer.model`` at hand the tokenizer is rebuilt from it and
    the shipped files (so it works even when the original files could not be loaded at
    all, and ``tokenizer`` is None); otherwise the settings are applied to ``tokenizer``.
    """
    tok_dir = _tokenizer_dir(config)
    patched = _patched_copy(tok_dir) if tok_dir is not None else None
    if patched is not None:
        from transformers import LlamaTokenizer

        tokenizer = LlamaTokenizer.from_pretrained(str(patched), legacy=SETTINGS["legacy"])
    elif tokenizer is None:
        from airo.core import ConfigError

        raise ConfigError("the llama-1 tokenizer patch needs the checkpoint's tokenizer.model "
                          "(or a tokenizer transformers can load)")
    tokenizer.add_special_tokens({k: SETTINGS[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")})
    tokenizer.add_bos_token = SETTINGS["add_bos_token"]
    tokenizer.add_eos_token = SETTINGS["add_eos_token"]
    tokenizer.model_max_length = SETTINGS["model_max_length"]
    tokenizer.padding_side = SETTINGS["padding_side"]
    tokenizer.clean_up_tokenization_spaces = SETTINGS["clean_up_tokenization_spaces"]
    return tokenizer


@dataclass
class Llama1Options:
    llama1_tokenizer_patch: bool = field(default=False, metadata={
        "help": "Apply the llama-1 tokenizer patch (same as --tokenizer_patches llama1)."})

    def validate(self, config) -> None:
        if self.llama1_tokenizer_patch:
            patches = [p for p in config.model.tokenizer_patches.split(",") if p and p != "none"]
            config.model.tokenizer_patches = ",".join(dict.fromkeys(patches + ["llama1"]))


@hookimpl
def register_options(register):
    register("llama1", Llama1Options, description="the llama-1 tokenizer patch")


@hookimpl
def register_tokenizer_patches(register):
    register("llama1", apply, detect=detect,
             description="llama-1 checkpoints with broken tokenizer files: LlamaTokenizer, <s> </s> <unk>, "
                         "pad=<unk>, add BOS not EOS, max length 2048 (automatic when detected)")
