"""The option table: every flag (airo's, the plugins', ``TrainingArguments``') with its
type, default and help. What a flag is: :mod:`airo.core.flag_types`; airo's own and
TrainingArguments' flags: :mod:`airo.core.flag_tables`; how a raw value from a flag or YAML
becomes a typed, checked one: :mod:`airo.core.flag_values` (all importable from here too)."""

from __future__ import annotations

import dataclasses
import typing

from .flag_tables import _cached_training_rows, _default_of, _own_flags, training_flags
from .flag_types import INT64, Constraint, Flag, _strip_optional
from .flag_values import (check_path, check_value, constraint_of, convert, describe_value, is_bool_flag,
                          normalise_name, parse_flag_tokens)
from .options import SECTIONS

# the option table, and (from flag_types, flag_tables and flag_values) what a flag is and how its values are read
__all__ = ["INT64", "Constraint", "Flag", "_cached_training_rows", "_own_flags", "_strip_optional", "all_flags",
           "check_path", "check_value", "constraint_of", "convert", "describe_value", "is_bool_flag", "normalise_name",
           "parse_flag_tokens", "plugin_flags", "section_names", "training_flags"]


def plugin_flags(core: dict[str, Flag]) -> dict[str, Flag]:
    """The options plugins registered (``register_options``), as flags. A section with an
    option another section (airo's, TrainingArguments', another plugin's) has is refused
    first, with a warning naming both (``PluginManager.settle_options``)."""
    from .plugins import get_plugin_manager

    manager = get_plugin_manager()
    manager.settle_options()
    registry = manager.registry()
    flags: dict[str, Flag] = {}
    for section in registry.options.values():
        hints = typing.get_type_hints(section.args)
        for f in dataclasses.fields(section.args):
            flags[f.name] = Flag(f.name, section.name, hints.get(f.name, str), _default_of(f),
                                 f.metadata.get("help", ""), plugin=section.plugin,
                                 resumable=bool(f.metadata.get("resumable")), constraint=Constraint.of(f.metadata))
    return flags


def all_flags(include_training: bool = True) -> dict[str, Flag]:
    flags = dict(training_flags()) if include_training else {}
    flags.update(_own_flags())  # airo's own win where names overlap
    flags.update(plugin_flags(flags))
    return flags


def section_names() -> list[str]:
    """YAML sections: airo's own, ``training``, and every plugin's."""
    from .plugins import get_registry

    return [*SECTIONS, "training", *get_registry().options]
