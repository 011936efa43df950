"""What an option is: its :class:`Flag` (name, section, type, default, help, owner) and the
:class:`Constraint` on its values, declared once per option. The tables of flags are
:mod:`airo.core.flags`; converting and checking values, :mod:`airo.core.flag_values`."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

INT64 = (-(2 ** 63), 2 ** 63 - 1)  # an integer option without declared bounds still fits torch's and numpy's ints


@dataclass(frozen=True)
class Constraint:
    """What values an option accepts, declared once per option: airo's own and plugins' in
    the dataclass field's metadata (``field(default=1, metadata={"min": 1})``), the
    TrainingArguments fields in ``options.TRAINING_CONSTRAINTS`` plus the choices their
    types name (enums, ``choices`` metadata). :func:`check_value` enforces it for every
    value a user gives, before anything loads."""

    min: float | None = None  # at least
    max: float | None = None  # at most
    above: float | None = None  # strictly above
    below: float | None = None  # strictly below
    whole_from_1: bool = False  # below 1 a fraction, from 1 a whole count (``--save_steps 0.1`` or ``50``)
    choices: tuple = ()  # the accepted names (or numbers)
    registry: str = ""  # accepted names are those registered for this kind (``formats``, ``loaders``...)
    extra: tuple = ()  # names accepted besides the registered ones (``auto``, ``none``)
    many: bool = False  # a comma (or space) list of choices
    path: str = ""  # "file": an existing file, unless the value is inline JSON
    pattern: str = ""  # a regular expression the whole value matches (case-insensitive)
    accepted: str = ""  # how messages word the accepted values (default: from the bounds or choices)

    KEYS = ("min", "max", "above", "below", "whole_from_1", "choices", "registry", "extra", "many", "path",
            "pattern", "accepted")

    @classmethod
    def of(cls, *metadata: typing.Mapping | None) -> Constraint | None:
        """The constraint the metadata mappings declare (later ones win), None if none does."""
        given: dict[str, Any] = {}
        for m in metadata:
            given.update({k: v for k, v in (m or {}).items() if k in cls.KEYS})
        if not given:
            return None
        for key in ("choices", "extra"):
            if key in given:
                given[key] = tuple(given[key])
        return cls(**given)

    @property
    def bounded(self) -> bool:
        return any(b is not None for b in (self.min, self.max, self.above, self.below))

    def describe(self) -> str:
        """``above 0 and at most 1``, ``cosine, linear or constant``: for messages."""
        if self.accepted:
            return self.accepted
        if self.choices or self.extra:
            names = [str(c) for c in (*self.extra, *self.choices)]
            text = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            return f"a comma list of {text}" if self.many else text
        parts = []
        if self.min is not None:
            parts.append(f"at least {_number(self.min)}")
        if self.above is not None:
            parts.append(f"above {_number(self.above)}")
        if self.max is not None:
            parts.append(f"at most {_number(self.max)}")
        if self.below is not None:
            parts.append(f"below {_number(self.below)}")
        text = " and ".join(parts)
        if self.whole_from_1:
            text += ("; " if text else "") + "below 1 a fraction, from 1 a whole number"
        return text


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) >= 1e6 or isinstance(x, int) else f"{x:g}"


@dataclass(frozen=True)
class Flag:
    name: str
    section: str  # model | data | run | training | a plugin's section
    type: Any
    default: Any
    help: str
    plugin: str = ""  # the plugin that registered the section ("" for airo's own options)
    resumable: bool = False  # may change when a run resumes (plugin options say so in metadata)
    constraint: Constraint | None = None  # the values it accepts (see Constraint)


def _strip_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        # Union[str, SomeEnum] and friends: the string form is what TrainingArguments accepts.
        if len(args) == 1:
            return _strip_optional(args[0])
        for preferred in (bool, int, float):
            if preferred in args and all(a in (bool, int, float) for a in args):
                return preferred
        if any(typing.get_origin(a) in (list, dict) or a in (list, dict) for a in args):
            return next(a for a in args if typing.get_origin(a) in (list, dict) or a in (list, dict))
        return str
    return tp
