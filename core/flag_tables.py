"""airo's own options and ``TrainingArguments``' as flags: the part of the option table
that needs no plugin (the plugin manager checks plugin options against it). The whole
table, plugins' options included, is :func:`airo.core.flags.all_flags`."""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from typing import Any

from .flag_types import Constraint, Flag, _strip_optional
from .options import SECTIONS, SEED_TRAINING_DEFAULTS, TRAINING_CONSTRAINTS


def _own_flags() -> dict[str, Flag]:
    flags: dict[str, Flag] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flags[f.name] = Flag(f.name, section, hints[f.name], _default_of(f), f.metadata.get("help", ""),
                                 resumable=bool(f.metadata.get("resumable")), constraint=Constraint.of(f.metadata))
    return flags


_TRAINING_FLAGS: dict[str, Flag] | None = None


_KIND_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "list": list, "dict": dict}


def _enum_values(tp) -> list | None:
    """The values of the enum a type hint names (``SchedulerType | str``, ``list[DebugOption]``)."""
    for arg in (tp, *typing.get_args(tp)):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return [e.value for e in arg]
        if typing.get_origin(arg) is list:
            inner = _enum_values(typing.get_args(arg)[0]) if typing.get_args(arg) else None
            if inner:
                return inner
    return None


def _derived_choices(name: str, hint, metadata) -> list | None:
    """The names a TrainingArguments field accepts, as transformers itself declares them."""
    if name == "report_to":
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        return ["all", "none", *INTEGRATION_TO_CALLBACK]
    if name == "fsdp":
        from transformers.trainer_utils import FSDPOption

        return [o.value for o in FSDPOption]
    choices = _enum_values(hint)
    if choices is None and metadata and metadata.get("choices"):
        choices = list(metadata["choices"])
    return choices


def _training_rows() -> list[list]:
    """[name, kind, optional, default, help, choices] for each TrainingArguments field
    (imports transformers)."""
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    rows = []
    for f in dataclasses.fields(TrainingArguments):
        if not f.init or f.name.startswith("_") or f.name == "output_dir":
            continue
        hint = hints.get(f.name, str)
        base = _strip_optional(hint)
        kind = next((k for k, t in _KIND_TYPES.items() if (typing.get_origin(base) or base) is t), "str")
        optional = f.default is None or type(None) in typing.get_args(hint)
        default = f.default if f.default is not dataclasses.MISSING else None
        rows.append([f.name, kind, optional, json.loads(json.dumps(default, default=str)),
                     f.metadata.get("help", "") if f.metadata else "",
                     _derived_choices(f.name, hint, f.metadata)])
    return rows


def _cached_training_rows() -> list[list]:
    """The TrainingArguments table, kept in airo's cache per transformers version: building a
    config (and `--help-all`, and every fail-fast check) then imports no transformers."""
    from importlib.metadata import PackageNotFoundError, version

    from .atomic import write_text
    from .data.paths import cache_home  # the data layer's bottom module: no import circle

    try:
        key = version("transformers")
    except PackageNotFoundError:  # pragma: no cover - transformers is a dependency
        return _training_rows()
    home = cache_home()
    # -2: the rows carry each field's choices (a table without them is rebuilt)
    path = home / f"training-arguments-{key}-2.json" if home is not None else None
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # rebuilt below
    rows = _training_rows()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, json.dumps(rows))
        except OSError:  # a read-only cache costs the next run an import, nothing more
            pass
    return rows


def training_flags() -> dict[str, Flag]:
    """TrainingArguments fields as flags, with the seed's defaults."""
    global _TRAINING_FLAGS
    if _TRAINING_FLAGS is None:
        flags = {}
        for name, kind, optional, default, help_text, choices in _cached_training_rows():
            tp = _KIND_TYPES[kind]
            derived = {"choices": choices, "many": name in _MANY_TRAINING} if choices else None
            if derived and name == "optim":
                derived["extra"] = ["auto"]  # airo's: chosen once the model is loaded
            if derived and name == "fsdp":
                derived["extra"] = ["true", "false"]  # airo's shorthand (training.arguments.fsdp_shorthand)
            flags[name] = Flag(name, "training", typing.Optional[tp] if optional else tp,
                               SEED_TRAINING_DEFAULTS.get(name, default), help_text,
                               constraint=Constraint.of(derived, TRAINING_CONSTRAINTS.get(name)))
        _TRAINING_FLAGS = flags
    return _TRAINING_FLAGS


# TrainingArguments fields that take several of their choices (``--report_to wandb,tensorboard``)
_MANY_TRAINING = frozenset({"report_to", "debug", "fsdp"})


def _default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
