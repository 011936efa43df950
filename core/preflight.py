"""Checks that fail in seconds, before anything heavy loads: the model path, the dataset
path, the format and the template.

A mistyped local path used to spend a minute in Hub retries and end with "check your
internet connection"; an unknown format was reported only after a 70b model had loaded.
Here a path that is meant to be local and does not exist is an error naming the folder
(and, for a value from a YAML file, where relative paths are resolved from); a Hub name
that is not in the local cache is looked up once, with a short timeout.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from .errors import ConfigError, DataError

# A Hub repo id: ``name`` or ``owner/name``, letters, digits and ._- (no "--" or "..").
_HUB_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:/[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)?$")
HUB_TIMEOUT_S = 10


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and "--" not in name and ".." not in name


def _meant_local(name: str) -> bool:
    """A path the user meant as a folder here: explicitly relative or absolute, not a Hub id,
    or one whose first part is a folder that exists here (``examples/tiny-lama``)."""
    if name.startswith((".", "/", "~")) or not is_hub_id(name):
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def _where(config, option: str) -> str:
    origin = config.origins.get(option.lstrip("-"))
    return f" (set at {origin})" if origin and ", line " in origin else ""


def _missing_folder(config, option: str, name: str) -> ConfigError:
    path = Path(name).expanduser()
    text = (f"{option} {name!r}{_where(config, option)}: no such folder {path.absolute()} (relative paths are "
            f"resolved from the current directory, {Path.cwd()})")
    if config.config_file and not path.is_absolute():
        beside = Path(config.config_file).parent / path
        if beside.is_dir():
            text += f"; relative to the config file it would be {beside.resolve()}, which exists"
    siblings = [p.name for p in path.absolute().parent.iterdir()] if path.absolute().parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
    if close:
        text += f". Did you mean {str(path.parent / close[0])!r}?"
    return ConfigError(text)


def _hub_reachable(name: str) -> str | None:
    """None when ``name`` is in the local Hub cache or the Hub answers for it; else why not."""
    try:
        from huggingface_hub import model_info, try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "it is not in the local Hub cache and HF_HUB_OFFLINE is set"
    try:
        model_info(name, timeout=HUB_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - offline, not found, gated: say which, once
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return None


def check_model_source(config, option: str = "--model_name_or_path", name: str | None = None) -> None:
    """The model (or tokenizer) named by ``option``: an existing folder, or a Hub name the
    cache or the Hub knows."""
    name = name if name is not None else config.model.model_name_or_path
    if not name or Path(name).expanduser().is_dir():
        return
    beside_config = bool(config.config_file) and (Path(config.config_file).parent / name).is_dir()
    if _meant_local(name) or beside_config:
        raise _missing_folder(config, option, name)
    problem = _hub_reachable(name)
    if problem:
        raise ConfigError(f"{option} {name!r}{_where(config, option)} is not a local folder and cannot be loaded "
                          f"from the Hub: {problem}. If you meant a local folder: {Path(name).absolute()} does not "
                          f"exist (relative paths are resolved from the current directory, {Path.cwd()}). Otherwise "
                          "connect, and log in (`hf auth login`) for a gated model.")


def check_dataset_source(config) -> None:
    """Each file named by ``--dataset`` exists (a Hub dataset name is left to the loader)."""
    from .data.io import SUFFIXES

    for part in (p.strip() for p in (config.data.dataset or "").split(",") if p.strip()):
        path = Path(part)
        if path.exists():
            continue
        if path.suffix.lower() in SUFFIXES or _meant_local(part):
            where = _where(config, "--dataset")
            raise DataError(f"file not found{where} (relative paths are resolved from {Path.cwd()})",
                            path=part, reason="file_not_found")


def check_decontaminate_files(config) -> None:
    """Each benchmark question file or folder --decontaminate names exists."""
    for part in (p.strip() for p in (config.data.decontaminate or "").split(",") if p.strip()):
        if not Path(part).exists():
            raise DataError(f"file not found{_where(config, '--decontaminate')} (relative paths are resolved from "
                            f"{Path.cwd()})", path=part, reason="file_not_found")


def check_sources(config) -> None:
    """Every source of a mix: its format and templates resolve (the entries' names were checked
    with the config), and none is an `airo preprocess` output (a mix reads the sources)."""
    from .data.cache import is_preprocessed
    from .data.plan import resolve_plans
    from .data.sources import resolve_sources

    for state in resolve_sources(config):
        if is_preprocessed(state.path):
            raise DataError(f"{state.label}: an `airo preprocess` output cannot be one source of a mix; give the "
                            "data it was made from (each source is cached on its own)", path=state.path,
                            reason="unsupported_file")
        resolve_plans(state.source_config(config, alone=False), state.templates)


def preflight(config) -> None:
    """Everything that can be checked before a model loads (see the module docstring)."""
    from .data.plan import resolve_plan

    check_model_source(config)
    if config.model.tokenizer_name_or_path:
        check_model_source(config, "--tokenizer_name_or_path", config.model.tokenizer_name_or_path)
    check_dataset_source(config)
    from .config import check_option_paths
    from .data.cache import is_preprocessed

    check_option_paths(config)  # --deepspeed, --fsdp_config...: the files options name
    check_decontaminate_files(config)
    if config.data.datasets:
        check_sources(config)
    elif not is_preprocessed(config.data.dataset):
        resolve_plan(config)  # an unknown format or template
