"""The option table: every flag (airo's, the plugins', ``TrainingArguments``') with its
type, default and help, and how a raw value from a flag or YAML becomes a typed one."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .options import ALIASES, OBSOLETE, SECTIONS, SEED_TRAINING_DEFAULTS, TRAINING_CONSTRAINTS, suggest

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
            flags[name] = Flag(name, "training", typing.Optional[tp] if optional else tp,
                               SEED_TRAINING_DEFAULTS.get(name, default), help_text,
                               constraint=Constraint.of(derived, TRAINING_CONSTRAINTS.get(name)))
        _TRAINING_FLAGS = flags
    return _TRAINING_FLAGS


# TrainingArguments fields that take several of their choices (``--report_to wandb,tensorboard``)
_MANY_TRAINING = frozenset({"report_to", "debug", "fsdp"})


def _default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


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


# -- value conversion ----------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


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


def is_bool_flag(flag: Flag) -> bool:
    return _strip_optional(flag.type) is bool


_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "text", list: "a list",
          dict: "a mapping"}


def describe_value(value: Any) -> str:
    """``a list [4]``: what a wrong value is, for messages."""
    if value is None:
        return "nothing (null)"
    kind = next((name for tp, name in _KINDS.items() if isinstance(value, tp)), type(value).__name__)
    text = json.dumps(value, default=str) if isinstance(value, (list, dict, bool)) else repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _expected(tp) -> str:
    if tp is bool:
        return "true or false"
    origin = typing.get_origin(tp) or tp
    return {int: "an integer", float: "a number", list: "a list", dict: "a mapping"}.get(origin, "text")


def convert(flag: Flag, value: Any, where: str) -> Any:
    """``value`` (a flag's text, or a YAML or Python value) as ``flag``'s type; ConfigError
    naming ``where`` (``--bits`` or ``train.yaml, line 7: bits``) for a value of the wrong
    shape, an unparsable string, or a number that is not finite."""
    tp = _strip_optional(flag.type)
    origin = typing.get_origin(tp) or tp
    optional = flag.default is None or type(None) in typing.get_args(flag.type)
    if value is None:
        wrong_shape = not optional and origin in (bool, int, float, str, list, dict)
    else:  # shapes no conversion can make sense of (`bits: [4]`, `learning_rate: true`)
        wrong_shape = (isinstance(value, dict) and origin in (bool, int, float, str, list)
                       or isinstance(value, list) and origin in (bool, int, float, dict)
                       or isinstance(value, list) and origin is str and any(isinstance(v, (list, dict)) for v in value)
                       or isinstance(value, bool) and origin in (int, float))
    if wrong_shape:
        raise ConfigError(f"{where}: expected {_expected(tp)}, got {describe_value(value)}")
    if value is None:
        return None
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected true or false")
        # "None" unsets an optional number (--neftune_noise_alpha None); for text options
        # such as --report_to, "none" is a value of its own.
        if isinstance(value, str) and value.strip().lower() in ("none", "null") and optional \
                and tp in (int, float, bool):
            return None
        if tp is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError("expected an integer")
                return int(value)
            return int(value)
        if tp is float:
            number = float(value)
            if not math.isfinite(number):  # nan or inf: accepted here, it would fail after the model loaded
                raise ValueError("expected a finite number")
            return number
        if origin in (list, dict):
            if isinstance(value, origin):
                return value
            text = str(value).strip()
            if text.startswith("[" if origin is list else "{"):
                return json.loads(text)
            if origin is list:
                return [v for v in text.replace(",", " ").split() if v]
            return text  # e.g. a path to a JSON file (--deepspeed)
        if isinstance(value, list) and tp is str:
            return ",".join(str(v) for v in value)  # YAML `include_sources: [a, b]`
        if isinstance(value, (dict, list)):
            return value
        return str(value) if not isinstance(value, str) else value
    except (ValueError, TypeError, OverflowError, json.JSONDecodeError) as exc:
        accepted = _accepted(flag)
        raise ConfigError(f"{where}: invalid value {_shown(value)} for {flag.name}: {' '.join(str(exc).split())}"
                          + (f"; it must be {accepted}" if accepted else "")) from None


# -- constraints ---------------------------------------------------------------------------

def constraint_of(flag: Flag) -> Constraint | None:
    """The flag's declared constraint; a number declared without bounds still has to fit a
    64-bit integer (an int) or be finite (a float, see :func:`convert`)."""
    if flag.constraint is not None:
        return flag.constraint
    if _strip_optional(flag.type) is int:
        return Constraint(min=INT64[0], max=INT64[1])
    return None


def _accepted(flag: Flag) -> str:
    c = constraint_of(flag)
    return c.describe() if c is not None and not c.registry else ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _registered(kind: str) -> tuple[dict, str]:
    from .plugins import get_registry
    from .registry import _KIND

    return get_registry().kind(kind), _KIND[kind].singular


def check_value(flag: Flag, value: Any, where: str) -> None:
    """ConfigError naming ``where`` (``--lora_r``, ``train.yaml, line 7: lora_r``), the value
    and what is accepted, unless ``value`` (already converted) meets the flag's constraint."""
    c = constraint_of(flag)
    if c is None or value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, float)) and not (c.choices or c.registry):
        _check_number(c, value, where)
    elif c.choices or c.registry or c.extra:
        _check_names(flag, c, value, where)
    if c.pattern and isinstance(value, str) and not re.fullmatch(c.pattern, value.strip(), re.IGNORECASE):
        raise ConfigError(f"{where} must be {c.describe()}, got {_shown(value)}")


def check_path(flag: Flag, value: Any, where: str) -> None:
    """A path the flag's constraint says must exist (``path="file"``) does; inline JSON is no
    path. Checked by preflight (a config may be built before its files exist)."""
    c = constraint_of(flag)
    if c is None or c.path != "file" or not isinstance(value, str) or value.lstrip().startswith(("{", "[")):
        return
    path = Path(value).expanduser()
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise ConfigError(f"{where} {value!r}: {what} (relative paths are resolved from the current "
                          f"directory, {Path.cwd()}); it must be a JSON file or inline JSON")


def _check_number(c: Constraint, value: float, where: str) -> None:
    ok = ((c.min is None or value >= c.min) and (c.max is None or value <= c.max)
          and (c.above is None or value > c.above) and (c.below is None or value < c.below))
    if ok and c.whole_from_1 and value >= 1 and not float(value).is_integer():
        ok = False
    if not ok:
        raise ConfigError(f"{where} must be {c.describe()}, got {_shown(value)}")


def _items(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [v.strip() if isinstance(v, str) else v for v in value]
    return [v for v in re.split(r"[,\s]+", str(value).strip()) if v]


def _check_names(flag: Flag, c: Constraint, value: Any, where: str) -> None:
    items = _items(value) if c.many else [value.strip() if isinstance(value, str) else value]
    if not items and c.many and flag.default in ("", [], ()):
        return  # an empty list is the default (--debug)
    if not items or any(item == "" for item in items):
        raise ConfigError(f"{where} must be {_names_text(c)}, got an empty value")
    if "none" in items and len(items) > 1:
        raise ConfigError(f"{where}: none cannot be combined with other names, got {_shown(value)}")
    if c.registry:
        table, singular = _registered(c.registry)
        accepted = [*c.extra, *table]
        for item in items:
            if item not in accepted:
                known = ", ".join([*c.extra, *sorted(table)]) or "none"
                raise ConfigError(f"{where}: unknown {singular} {item!r}.{suggest(str(item), accepted)} "
                                  f"Known: {known}. (`airo list {c.registry}` shows them; a plugin may provide "
                                  "more.)")
        return
    accepted = [*c.extra, *c.choices]
    for item in items:
        if item not in accepted:
            shown = _shown(value) if not c.many or len(items) == 1 else f"{item!r} in {_shown(value)}"
            hint = suggest(item, [str(a) for a in accepted]) if isinstance(item, str) else ""
            raise ConfigError(f"{where} must be {c.describe()}, got {shown}{'.' + hint if hint else ''}")


def _names_text(c: Constraint) -> str:
    if c.registry:
        return " or ".join([*c.extra, f"a registered {c.registry} name"])
    return c.describe()


# -- parsing -------------------------------------------------------------------------------

def normalise_name(name: str) -> str:
    return name.replace("-", "_")


def parse_flag_tokens(tokens: list[str], flags: dict[str, Flag]) -> list[tuple[str, Any, str]]:
    """``--name value`` / ``--name=value`` / bare boolean ``--name`` -> (name, raw value, origin)."""
    out = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"unexpected argument {tok!r}: flags look like --name value")
        body = tok[2:]
        raw: Any
        if "=" in body:
            body, raw = body.split("=", 1)
            i += 1
        else:
            name = ALIASES.get(normalise_name(body), normalise_name(body))
            flag = flags.get(name)
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            takes_value = nxt is not None and not (nxt.startswith("--") and len(nxt) > 2)
            if flag is not None and is_bool_flag(flag):
                if takes_value and nxt.strip().lower() in _TRUE | _FALSE:
                    raw, i = nxt, i + 2
                else:
                    raw, i = True, i + 1
            elif takes_value:
                raw, i = nxt, i + 2
            elif flag is None:
                # an obsolete seed flag, or a misspelt (boolean) one: the config names it, with a suggestion
                raw, i = True, i + 1
            else:
                raise ConfigError(f"flag --{body} needs a value")
        out.append((ALIASES.get(normalise_name(body), normalise_name(body)), raw, f"--{body}"))
    return out
