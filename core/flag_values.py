"""How a raw value from a flag or YAML becomes a typed one, and is checked against its
option's :class:`~airo.core.flag_types.Constraint` before anything loads; and how flag tokens
are parsed. The option tables are :mod:`airo.core.flags`."""

from __future__ import annotations

import json
import math
import re
import typing
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .flag_types import INT64, Constraint, Flag, _strip_optional
from .options import ALIASES, suggest

# -- value conversion ----------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


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
