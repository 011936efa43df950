"""The bounds of a chat-template rendering (:mod:`airo.core.template_sandbox`): the limits,
the per-rendering budget of time and size, and the checks that charge it *before* Python
builds a value (widths, ``*``, ``**``, ``join``, ``replace``, filters, calls)."""

from __future__ import annotations

import contextvars
import functools
import re
import time
from typing import Any

from .errors import ConfigError

TIME_LIMIT = 3.0  # seconds per rendering; a real chat template renders a conversation in under a millisecond
MAX_TEMPLATE_CHARS = 1 << 20  # real chat templates are a few kilobytes
MIN_OUTPUT = 4 << 20  # the output bound is this plus OUTPUT_FACTOR times the characters of the inputs
OUTPUT_FACTOR = 8
WORK_FACTOR = 16  # what one rendering may create and write in all, in multiples of the output bound
MAX_INT_BITS = 1 << 16  # numbers up to ~20,000 digits
TOJSON_MAX_INDENT = 64


class ChatTemplateError(ConfigError):
    """A chat template that cannot be rendered: a Jinja error, or a bound it ran into."""


class ChatTemplateLimit(ChatTemplateError):
    """The template ran into a bound (time, size, recursion, sandbox): it is the template's
    fault whatever the conversation, so a caller checking many conversations stops at once."""


class _Stop(Exception):
    """Raised inside a rendering when a bound is hit; becomes a ChatTemplateLimit."""


class _Budget:
    __slots__ = ("deadline", "max_value", "work_left", "time_limit")

    def __init__(self, time_limit: float, max_output: int):
        self.time_limit = time_limit
        self.deadline = time.perf_counter() + time_limit
        self.max_value = max_output
        self.work_left = WORK_FACTOR * max_output

    def tick(self) -> None:
        if time.perf_counter() > self.deadline:
            raise _Stop(f"ran for more than {self.time_limit:g} s (a loop or recursion that does not end soon)")

    def charge(self, size: int) -> None:
        self.work_left -= size
        if self.work_left < 0:
            raise _Stop(f"built more than {WORK_FACTOR * self.max_value:,} characters in one rendering")

    def allow(self, size: int, what: str) -> None:
        if size > self.max_value:
            raise _Stop(f"would build {what} of {size:,} characters (at most {self.max_value:,})")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("airo_template_budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    # outside a rendering (Jinja folds constant expressions while compiling): the default bounds
    return budget if budget is not None else _Budget(TIME_LIMIT, MIN_OUTPUT)


def _size(value: Any) -> int:
    """What ``value`` costs: characters of a string, 8 per item of a container, bytes of a number."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int):
        return value.bit_length() // 8 + 1
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return 8 * len(value)
    return 1


_WIDTH = re.compile(r"\d+")


def _check_widths(fmt: str, args: Any, budget: _Budget) -> None:
    """``'%9999999999d' % x`` and ``'{:>9999999999}'.format(x)``, or a ``*`` width from ``args``."""
    if not isinstance(fmt, str):
        return
    widest = max((int(w) for w in _WIDTH.findall(fmt) if len(w) < 20), default=0)
    if any(len(w) >= 20 for w in _WIDTH.findall(fmt)):
        widest = budget.max_value + 1
    budget.allow(widest, "a formatted field")
    if "*" in fmt or "{" in fmt:
        values = args if isinstance(args, (tuple, list)) else (args.values() if isinstance(args, dict) else (args,))
        for value in values:
            if isinstance(value, int) and not isinstance(value, bool):
                budget.allow(abs(value), "a formatted field")


def _check_ints(args: tuple, kwargs: dict, budget: _Budget) -> None:
    """A number passed to a call or filter is a width, a count or a length: never above the bound."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            budget.allow(abs(value), "a width or count")


def _iter_len(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 0


def _check_replace(s: Any, old: Any, new: Any, budget: _Budget, count: Any = None) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        hits = len(s) + 1 if old == "" else s.count(old)
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        budget.allow(len(s) + hits * (len(new) - len(old)), "a replaced string")


def _check_join(separator: Any, items: Any, budget: _Budget) -> None:
    if isinstance(separator, str):
        budget.allow(len(separator) * _iter_len(items), "a joined string")


def _check_call(fn: Any, args: tuple, kwargs: dict, budget: _Budget) -> None:
    """Estimate, before it runs, what the few calls that can multiply sizes would build."""
    _check_ints(args, kwargs, budget)
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", "")
    wrapped = getattr(fn, "__wrapped__", None)  # the sandbox's str.format / format_map wrapper
    if wrapped is not None and isinstance(getattr(wrapped, "__self__", None), str) and name in ("format", "format_map"):
        _check_widths(wrapped.__self__, args[0] if name == "format_map" and args else (*args, *kwargs.values()),
                      budget)
    elif isinstance(owner, str):
        if name == "replace" and len(args) >= 2:
            _check_replace(owner, args[0], args[1], budget, args[2] if len(args) > 2 else kwargs.get("count"))
        elif name == "join" and args:
            _check_join(owner, args[0], budget)
        elif name == "translate" and args and isinstance(args[0], dict):
            widest = max((_size(v) for v in args[0].values()), default=1)
            budget.allow(len(owner) * widest, "a translated string")
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(size, int):
                budget.allow(owner.count("\t") * abs(size) + len(owner), "an expanded string")


def _check_filter(name: str, args: tuple, kwargs: dict, budget: _Budget) -> None:
    """Estimate, before it runs, what a filter that can multiply sizes would build."""
    budget.tick()
    values = [a for a in args if not isinstance(a, _INTERNAL)]
    _check_ints(tuple(values[1:]), kwargs, budget)
    if values:
        value, rest = values[0], values[1:]
        if name == "replace" and len(rest) >= 2:
            _check_replace(str(value), rest[0], rest[1], budget, rest[2] if len(rest) > 2 else kwargs.get("count"))
        elif name == "join":
            _check_join(rest[0] if rest else kwargs.get("d", ""), value, budget)
        elif name == "indent" and isinstance(value, str):
            width = rest[0] if rest else kwargs.get("width", 4)
            each = len(width) if isinstance(width, str) else abs(width) if isinstance(width, int) else 0
            budget.allow(len(value) + (value.count("\n") + 1) * each, "an indented string")
        elif name == "wordwrap" and isinstance(value, str):
            width = rest[0] if rest else kwargs.get("width", 79)
            wrapstring = (rest[2] if len(rest) > 2 else kwargs.get("wrapstring")) or "\n"
            if isinstance(width, int) and isinstance(wrapstring, str):
                lines = len(value) // max(width, 1) + value.count("\n") + 1
                budget.allow(len(value) + lines * len(wrapstring), "a wrapped string")
        elif name == "format":
            _check_widths(value, (*rest, *kwargs.values()), budget)


def _filter_guard(name: str, fn: Any) -> Any:
    """A built-in filter with its arguments checked and its result charged."""

    @functools.wraps(fn)  # keeps jinja_pass_arg, so Jinja passes the environment/context as before
    def guarded(*args, **kwargs):
        budget = _BUDGET.get() or _budget()
        if len(args) > 1 or kwargs:  # ``value|trim`` has nothing to check before it runs
            _check_filter(name, args, kwargs, budget)
        result = fn(*args, **kwargs)
        size = len(result) if type(result) is str else _size(result)
        if size > budget.max_value:
            budget.allow(size, f"the result of the filter {name!r}")
        budget.work_left -= size
        if budget.work_left < 0:
            budget.charge(0)
        return result

    return guarded


_INTERNAL: tuple = ()  # what Jinja passes a filter before its value (environment, contexts); set with the environment


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100):  # noqa: A002 - Jinja's names
    from jinja2.utils import generate_lorem_ipsum

    _budget().allow(abs(int(n)) * abs(int(max)) * 12, "lorem ipsum")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)
