"""The option table: every flag (airo's, the plugins', ``TrainingArguments``') with its
type, default and help, and how a raw value from a flag or YAML becomes a typed one."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, PluginError
from .options import ALIASES, OBSOLETE, SECTIONS, SEED_TRAINING_DEFAULTS


@dataclass(frozen=True)
class Flag:
    name: str
    section: str  # model | data | run | training | a plugin's section
    type: Any
    default: Any
    help: str
    plugin: str = ""  # the plugin that registered the section ("" for airo's own options)
    resumable: bool = False  # may change when a run resumes (plugin options say so in metadata)


def _own_flags() -> dict[str, Flag]:
    flags: dict[str, Flag] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flags[f.name] = Flag(f.name, section, hints[f.name], f.default, f.metadata.get("help", ""))
    return flags


_TRAINING_FLAGS: dict[str, Flag] | None = None


_KIND_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "list": list, "dict": dict}


def _training_rows() -> list[list]:
    """[name, kind, optional, default, help] for each TrainingArguments field (imports transformers)."""
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
                     f.metadata.get("help", "") if f.metadata else ""])
    return rows


def _cached_training_rows() -> list[list]:
    """The TrainingArguments table, kept in airo's cache per transformers version: building a
    config (and `--help-all`, and every fail-fast check) then imports no transformers."""
    from importlib.metadata import PackageNotFoundError, version

    from .atomic import write_text
    from .data.cache import cache_home

    try:
        key = version("transformers")
    except PackageNotFoundError:  # pragma: no cover - transformers is a dependency
        return _training_rows()
    home = cache_home()
    path = home / f"training-arguments-{key}.json" if home is not None else None
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
        for name, kind, optional, default, help_text in _cached_training_rows():
            tp = _KIND_TYPES[kind]
            flags[name] = Flag(name, "training", typing.Optional[tp] if optional else tp,
                               SEED_TRAINING_DEFAULTS.get(name, default), help_text)
        _TRAINING_FLAGS = flags
    return _TRAINING_FLAGS


def _default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


def plugin_flags(core: dict[str, Flag]) -> dict[str, Flag]:
    """The options plugins registered (``register_options``), as flags. A name another
    section already has is an error naming both plugins and their distributions."""
    from .plugins import get_registry

    registry = get_registry()
    flags: dict[str, Flag] = {}
    for section in registry.options.values():
        hints = typing.get_type_hints(section.args)
        for f in dataclasses.fields(section.args):
            other = flags.get(f.name) or core.get(f.name)
            if other is not None:
                def who(plugin: str) -> str:
                    info = registry.plugins.get(plugin)
                    return f"plugin {plugin!r} ({info.distribution if info else '?'})" if plugin else "airo itself"
                raise PluginError(f"the option --{f.name} is registered twice: by {who(section.plugin)} in section "
                                  f"{section.name!r} and by {who(other.plugin)} in section {other.section!r}; "
                                  "block or uninstall one of them (AIRO_DISABLE_PLUGINS)")
            flags[f.name] = Flag(f.name, section.name, hints.get(f.name, str), _default_of(f),
                                 f.metadata.get("help", ""), plugin=section.plugin,
                                 resumable=bool(f.metadata.get("resumable")))
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
        raise ConfigError(f"{where}: invalid value {value!r} for {flag.name}: {exc}") from None


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
            elif flag is None and normalise_name(body) in OBSOLETE:
                raw, i = True, i + 1
            else:
                raise ConfigError(f"flag --{body} needs a value")
        out.append((ALIASES.get(normalise_name(body), normalise_name(body)), raw, f"--{body}"))
    return out
