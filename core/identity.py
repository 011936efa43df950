"""A run's identity: what, besides its options and its data, decides the training signal.

Two runs with the same options and data still train differently when the base model's
weights or config, the tokenizer's files, or a plugin that turns a record into tokens
(the dataset format, the prompt template, a tokenizer patch, the model loader) are not
the same. :func:`run_identity` records each of them; checkpoint markers and ``completed``
store it, and :func:`identity_changes` says what differs, one phrase per change (``the
base model's weights changed: model.safetensors``), so that a resume onto another base
model, tokenizer or plugin version is refused naming it.

What is recorded:

- a **local** model or tokenizer folder: the SHA-256 of every file that shapes training,
  by name: the weights transformers loads (``*.safetensors`` and their index when there
  are any, else ``*.bin``/``*.pt``/``*.pth`` and their index), the config
  (``config.json`` and any ``*.py`` a ``--trust_remote_code`` model runs), the tokenizer
  files (``tokenizer.json``, ``tokenizer.model``, ``tokenizer_config.json``, vocabularies,
  merges, special and added tokens, chat template);
- a **Hub** model or tokenizer: the commit its cached snapshot resolves to, or, not yet
  downloaded, the one the Hub serves now (the Hub names every file of a commit by its
  content, so the commit is the content); unknown (offline, not cached) is not compared;
- each plugin that shapes a token: its registered name, the plugin that registered it,
  and the name and version of the distribution that ships it.

The cost, and why it is the whole content. Hashing reads every weight file once per
start (a resume, a re-run of a finished run, a new run): SHA-256 runs at about 2 GB/s
per core (SHA-NI), and the shards are hashed on several threads at once (hashlib and
file reads release the GIL), so the read is bound by the disk: for a 140 GB model on a
3-7 GB/s NVMe drive, 20-50 s, beside a load that reads the same bytes (and, when the
memory allows, finds them in the page cache). Cheaper schemes were rejected because
each misses a real change: size/mtime/inode can be kept or set back by an in-place edit
(``os.utime``) and by copies (``cp -p``, ``rsync -t``), and hashing the safetensors
header plus sampled blocks misses an edit outside the samples (one tensor fine-tuned in
place). Within one process each file is hashed once (:func:`airo.core.fingerprint.file_sha256`
remembers it while inode, size, mtime and ctime are unchanged), so the completed-run
check, the resume check and the markers share one read. The digests are plain SHA-256
of each file: ``sha256sum`` prints the same, and for a Hub file they equal the name of
its blob in the Hub cache.

No heavy imports here.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .fingerprint import file_sha256

IDENTITY_VERSION = 1

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")
CONFIG_FILES = ("config.json",)

# -- files ---------------------------------------------------------------------------------


def weight_files(folder: Path) -> list[Path]:
    """The weight files transformers loads from ``folder``: safetensors when there are any
    (with their index), else the PyTorch pickles (with theirs)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    safetensors = [p for p in files if p.name.endswith((".safetensors", ".safetensors.index.json"))]
    if safetensors:
        return safetensors
    return [p for p in files if p.name.endswith((".bin", ".bin.index.json", ".pt", ".pth"))]


def config_files(folder: Path) -> list[Path]:
    """The model's config and the code a ``--trust_remote_code`` model runs."""
    return sorted(p for p in folder.iterdir() if p.is_file() and (p.name in CONFIG_FILES or p.suffix == ".py"))


def tokenizer_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.name in TOKENIZER_FILES or p.name.endswith(".tiktoken")))


def _threads(count: int) -> int:
    return max(1, min(count, os.cpu_count() or 1, 8))


def hash_files(folder: Path, files: list[Path]) -> dict[str, str]:
    """``{name relative to folder: sha256}``, the files hashed on several threads."""
    if not files:
        return {}
    with ThreadPoolExecutor(_threads(len(files))) as pool:
        digests = list(pool.map(file_sha256, files))
    return {str(p.relative_to(folder)): d for p, d in zip(files, digests)}


# -- where a model or tokenizer comes from --------------------------------------------------

def hub_revision(name: str) -> str | None:
    """The commit the local Hub cache resolves ``name`` to (its snapshot folder), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    for filename in ("config.json", "tokenizer_config.json"):
        try:
            found = try_to_load_from_cache(name, filename)
        except Exception:  # noqa: BLE001 - not a valid repo id
            return None
        if isinstance(found, str):
            return Path(found).parent.name
    # not downloaded yet: the commit the loader is about to download (one look-up, bounded)
    from .preflight import HUB_TIMEOUT_S, is_hub_id

    if not is_hub_id(name) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None
    try:
        from huggingface_hub import model_info

        return model_info(name, timeout=HUB_TIMEOUT_S).sha
    except Exception:  # noqa: BLE001 - offline or unknown: preflight says so, with its own message
        return None


def source_identity(name: str | None, parts: dict[str, Any]) -> dict[str, Any] | None:
    """A local folder's files by part (``{"weights": weight_files, ...}``), or a Hub repo's commit."""
    if not name:
        return None
    folder = Path(name).expanduser()
    if folder.is_dir():
        return {"local": {part: hash_files(folder, pick(folder)) for part, pick in parts.items()}}
    return {"hub": name, "revision": hub_revision(name)}


# -- plugins -------------------------------------------------------------------------------

def plugin_version(registry, plugin: str) -> tuple[str, str]:
    """(distribution, version) of the distribution that ships ``plugin``."""
    info = registry.plugins.get(plugin)
    if info is None:
        return "?", "?"
    return info.distribution, info.version


def _plugin_entry(registry, entry) -> dict[str, str]:
    distribution, version = plugin_version(registry, entry.plugin)
    return {"name": entry.name, "plugin": entry.plugin, "distribution": distribution, "version": version}


def token_plugins(config, loader=None) -> dict[str, Any]:
    """The plugins that turn a record into tokens: format, template, tokenizer patches, loader."""
    from .plugins import get_registry

    registry = get_registry()
    plugins: dict[str, Any] = {}
    fmt = registry.formats.get(config.data.dataset_format)
    if fmt is not None:
        plugins["format"] = _plugin_entry(registry, fmt)
    template_name = config.data.prompt_template or (fmt.default_template if fmt is not None else None)
    template = registry.templates.get(template_name) if template_name else None
    if template is not None:
        plugins["template"] = _plugin_entry(registry, template)
    try:
        patches = registry.select("patches", config.model.tokenizer_patches, config, option="--tokenizer_patches")
    except Exception:  # noqa: BLE001 - an unknown name fails with its own message where it is applied
        patches = []
    plugins["patches"] = [_plugin_entry(registry, p) for p in patches]
    if loader is None:
        try:
            from .model_output import select_loader

            loader = select_loader(config)
        except Exception:  # noqa: BLE001 - no loader applies: the run fails on that, with its message
            loader = None
    if loader is not None:
        plugins["loader"] = _plugin_entry(registry, loader)
    return plugins


# -- the whole -----------------------------------------------------------------------------

def run_identity(config, loader=None) -> dict[str, Any]:
    """What the run's training signal depends on besides its options and data (see the module docstring)."""
    model = config.model.model_name_or_path
    tokenizer = config.model.tokenizer_name_or_path or model
    return {"version": IDENTITY_VERSION,
            "model": source_identity(model, {"weights": weight_files, "config": config_files}),
            "tokenizer": source_identity(tokenizer, {"files": tokenizer_files}),
            "plugins": token_plugins(config, loader)}


_PART_LABEL = {("model", "weights"): "the base model's weights", ("model", "config"): "the base model's config",
               ("tokenizer", "files"): "the tokenizer"}
_ROLE_LABEL = {"format": "the dataset format", "template": "the prompt template", "loader": "the model loader"}
_SOURCE_LABEL = {"model": "the base model", "tokenizer": "the tokenizer"}


def _file_changes(label: str, old: dict[str, str], new: dict[str, str]) -> list[str]:
    edited = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    parts = [", ".join(edited)] if edited else []
    parts += [f"{name} added" for name in added] + [f"{name} removed" for name in removed]
    return [f"{label} changed: {', '.join(parts)}"] if parts else []


def _source_changes(what: str, old: Any, new: Any) -> list[str]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    label = _SOURCE_LABEL[what]
    if "local" in old and "local" in new:
        changes = []
        for part in sorted(set(old["local"]) | set(new["local"])):
            changes += _file_changes(_PART_LABEL.get((what, part), f"{label} ({part})"),
                                     old["local"].get(part) or {}, new["local"].get(part) or {})
        return changes
    if "hub" in old and "hub" in new:
        if old.get("revision") != new.get("revision") and old.get("revision") and new.get("revision"):
            return [f"{label}'s Hub revision changed: {old['revision']} -> {new['revision']}"]
        return []
    where = {True: "a local folder", False: "a Hub repo"}
    return [f"{label} changed: {where['local' in old]} -> {where['local' in new]}"]


def _describe(entry: dict[str, str]) -> str:
    return f"{entry.get('name')!r} ({entry.get('distribution')} {entry.get('version')})"


def _plugin_changes(old: Any, new: Any) -> list[str]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    changes = []
    for role, label in _ROLE_LABEL.items():
        before, now = old.get(role), new.get(role)
        if isinstance(before, dict) and isinstance(now, dict) and before != now:
            changes.append(f"{label} plugin changed: {_describe(before)} -> {_describe(now)}")
    before, now = old.get("patches"), new.get("patches")
    if isinstance(before, list) and isinstance(now, list) and before != now:
        show = lambda entries: ", ".join(_describe(e) for e in entries) or "none"  # noqa: E731
        changes.append(f"the tokenizer patches changed: {show(before)} -> {show(now)}")
    return changes


def identity_changes(recorded: Any, now: dict[str, Any]) -> list[str]:
    """How ``now`` differs from a ``recorded`` identity, one phrase per change. A part the
    record lacks (a checkpoint written before it was recorded) is not compared."""
    if not isinstance(recorded, dict):
        return []
    return (_source_changes("model", recorded.get("model"), now.get("model"))
            + _source_changes("tokenizer", recorded.get("tokenizer"), now.get("tokenizer"))
            + _plugin_changes(recorded.get("plugins"), now.get("plugins")))
