"""Rendering a Jinja chat template that came from outside: bounded in time, size and reach.

A ``chat_template`` reaches airo from a prompt template plugin, from a tokenizer folder
(``chat_template.jinja``, ``tokenizer_config.json``) or from a model someone published; it
is data, and airo renders it (the ``save`` action's parity check, ``airo chat``/``predict``).
:func:`render_chat_template` is the one place that renders one, the way transformers'
``apply_chat_template`` does (same sandbox, filters, globals and tags, so the text is the
text an inference engine renders), with bounds:

- **reach**: :class:`jinja2.sandbox.ImmutableSandboxedEnvironment`, so ``''.__class__``,
  ``__globals__`` and every attribute starting with ``_`` are refused, and no list or dict
  can be changed in place; no loader, so no ``{% include %}``/``{% import %}`` of files;
- **time**: every loop iteration and every call (macros and ``loop()`` recursion included)
  checks a deadline (:data:`TIME_LIMIT` seconds per rendering), so nested loops over
  ``range(100000)`` stop within the limit instead of running for hours;
- **size**: no single value (string, list, number) may exceed ``max_output`` (characters,
  or 8 bytes per item of a list): ``*``, ``**``, ``%``, ``~``, ``join``, ``replace``,
  ``indent``, widths and counts are checked *before* Python builds the value, and everything
  a rendering creates or writes (expressions, the literal text of every loop and macro body
  it runs) is charged against a budget of ``WORK_FACTOR * max_output``, so a template cannot
  build gigabytes in memory, nor return them;
- **recursion**: a macro calling itself without end is refused with a message, not a
  ``RecursionError`` traceback.

Every refusal is a :class:`ChatTemplateError` naming the template's source (``the prompt
template 'x' of plugin 'y'``, ``the tokenizer of ./model``) and what stopped it, on one line.
The checks cost a few percent of a normal rendering (tests/test_untrusted_input.py measures).
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import time
from datetime import datetime
from typing import Any

from .errors import ConfigError

__all__ = ["ChatTemplateError", "ChatTemplateLimit", "MAX_TEMPLATE_CHARS", "TIME_LIMIT", "render_chat_template",
           "tokenizer_template_variables"]

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


# -- the environment -------------------------------------------------------------------------

_ENVIRONMENT = None


def _environment():
    """The bounded environment, built once: transformers' chat-template environment (its
    sandbox class, trim/lstrip blocks, loop controls, ``{% generation %}``, ``tojson``,
    ``raise_exception``, ``strftime_now``, ``dict`` and ``namespace``) with the bounds above."""
    global _ENVIRONMENT, _INTERNAL
    if _ENVIRONMENT is not None:
        return _ENVIRONMENT
    import jinja2
    import jinja2.compiler
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.runtime import Context
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    _INTERNAL = (jinja2.Environment, nodes.EvalContext, Context)

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` renders its body (transformers tracks
        where it is for an assistant mask; the text is the same)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

        def _generation_support(self, caller):
            return caller()

    def literal_chars(body) -> int:
        """The literal text a body writes each time it runs (nested loops and macros charge their own)."""
        total = 0
        stack = list(body)
        while stack:
            node = stack.pop()
            if isinstance(node, nodes.TemplateData):
                total += len(node.data)
            elif not isinstance(node, (nodes.For, nodes.Macro, nodes.CallBlock)):
                stack.extend(node.iter_child_nodes())
        return total

    # The bounds are added as filters: Jinja calls a filter directly (a call from template code
    # goes through the sandbox's checks, which would cost more than the rendering), and a filter
    # that takes the context is never folded into a constant while compiling.
    def charge_node(cost: int):
        return nodes.Output([nodes.Filter(nodes.Const(""), "airo_charge", [nodes.Const(cost)], [], None, None)])

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["+", "*", "**", "%"])

        def _parse(self, source, name, filename):
            tree = super()._parse(source, name, filename)
            for loop in tree.find_all(nodes.For):
                cost = literal_chars(loop.body)
                if loop.recursive:  # its iterations are calls to loop(), each charged here
                    loop.body.insert(0, charge_node(cost))
                else:
                    loop.iter = nodes.Filter(loop.iter, "airo_loop", [nodes.Const(cost)], [], None, None)
            for block in (*tree.find_all(nodes.Macro), *tree.find_all(nodes.CallBlock)):
                block.body.insert(0, charge_node(literal_chars(block.body)))
            return tree

        def call_binop(self, context, operator, left, right):
            budget = _BUDGET.get() or _budget()
            if operator == "+":
                if type(left) is str and type(right) is str:  # the common case: text joined to text
                    size = len(left) + len(right)
                    if size > budget.max_value:
                        budget.allow(size, "a concatenated string")
                    budget.work_left -= size
                    if budget.work_left < 0:
                        budget.charge(0)
                    return left + right
                if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                    budget.allow(_size(left) + _size(right), "a concatenated value")
            elif operator == "%":
                if type(left) is int and type(right) is int:  # loop.index0 % 2
                    return left % right
                if isinstance(left, str):
                    _check_widths(left, right, budget)
            elif operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(times, int) and isinstance(seq, (str, list, tuple)):
                        budget.allow(_size(seq) * max(times, 0), "a repeated value")
                if isinstance(left, int) and isinstance(right, int):
                    if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                        raise _Stop(f"would compute a number of more than {MAX_INT_BITS:,} bits")
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                    if left.bit_length() * right > MAX_INT_BITS:
                        raise _Stop(f"would compute a number of more than {MAX_INT_BITS:,} bits")
            result = self.binop_table[operator](left, right)
            if not isinstance(result, (int, float)):
                size = _size(result)
                budget.allow(size, "a value")
                budget.charge(size)
            return result

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
            budget = _budget()
            budget.tick()
            _check_call(__obj, args, kwargs, budget)
            result = super().call(__context, __obj, *args, **kwargs)
            if isinstance(result, (str, list, tuple, dict)):
                size = _size(result)
                budget.allow(size, "a value")
                budget.charge(size)
            return result

    @jinja2.pass_context
    def loop(_context, iterable, cost: int):
        """A for loop's items, each one checking the deadline and charging the body's literal text."""
        budget = _budget()
        deadline = budget.deadline
        clock = time.perf_counter
        for item in iterable:
            budget.work_left -= cost
            if budget.work_left < 0 or clock() > deadline:
                budget.tick()
                budget.charge(0)
            yield item

    @jinja2.pass_context
    def charge(_context, _value, cost: int) -> str:
        budget = _budget()
        budget.tick()
        budget.charge(cost)
        return ""

    def finalize(value):
        budget = _BUDGET.get()
        if budget is not None:  # else Jinja folds a constant while compiling
            budget.work_left -= len(value) if type(value) is str else 16
            if budget.work_left < 0:
                budget.charge(0)
        return value

    def concat(*values) -> str:
        parts = [str(v) for v in values]
        budget = _budget()
        size = sum(map(len, parts))
        budget.allow(size, "a concatenated string")
        budget.charge(size)
        return "".join(parts)

    class Generator(jinja2.compiler.CodeGenerator):
        @jinja2.compiler.optimizeconst
        def visit_Concat(self, node, frame):  # noqa: N802 - Jinja's visitor name
            """``a ~ b`` joined by ``airo_concat``, which checks the size before joining."""
            self.write("environment.airo_concat(")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write(")")

    BoundedEnvironment.code_generator_class = Generator

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        if isinstance(indent, int) and indent > TOJSON_MAX_INDENT:
            raise _Stop(f"asked tojson for an indent of {indent} (at most {TOJSON_MAX_INDENT})")
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):  # noqa: A002 - the name transformers gives it
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):  # noqa: N805 - Jinja's Namespace signature
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with '_': {name!r}")

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, finalize=finalize,
                             extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: _filter_guard(name, fn) for name, fn in env.filters.items()}
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=TemplateDict(),
                       namespace=TemplateNamespace, lipsum=_lipsum)
    env.filters.update(airo_loop=loop, airo_charge=charge)
    env.airo_concat = concat
    _ENVIRONMENT = env
    return env


@functools.lru_cache(maxsize=64)
def _compiled(chat_template: str):
    return _environment().from_string(chat_template)


# -- rendering -------------------------------------------------------------------------------

def _plain(value: Any, chars: list[int], depth: int = 0) -> Any:
    """The template's inputs rebuilt from JSON types (what transformers gives a template);
    ``chars[0]`` counts their characters (the output bound grows with them)."""
    kind = type(value)
    if kind is str:
        chars[0] += len(value)
        return value
    if value is None or kind in (int, float, bool):
        chars[0] += 8
        return value
    if depth > 32:
        raise ChatTemplateError("the messages are nested more than 32 levels deep")
    if kind is dict or isinstance(value, dict):
        return {_plain(k, chars, depth + 1): _plain(v, chars, depth + 1) for k, v in value.items()}
    if kind is list:
        return [_plain(v, chars, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v, chars, depth + 1) for v in value)
    if isinstance(value, str):
        return _plain(str.__str__(value), chars)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, list):
        return [_plain(v, chars, depth + 1) for v in value]
    return f"<{type(value).__name__}>"


def tokenizer_template_variables(tokenizer) -> dict[str, str]:
    """The special-token strings a tokenizer gives its chat template (``bos_token``, ``eos_token`` ...)."""
    tokens = getattr(tokenizer, "special_tokens_map", None) or {}
    return {k: str(v) for k, v in tokens.items() if isinstance(v, str)}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def render_chat_template(chat_template: str, messages: list[dict[str, Any]], *, source: str,
                         add_generation_prompt: bool = False, time_limit: float | None = None,
                         max_output: int | None = None, **variables: Any) -> str:
    """``chat_template`` rendered for ``messages`` as ``apply_chat_template(...,
    tokenize=False)`` renders it, within the bounds of this module. ``source`` names the
    template in errors (``the prompt template 'x' of plugin 'y'``). ``variables`` are the
    other names the template sees (the tokenizer's special tokens: see
    :func:`tokenizer_template_variables`). Raises :class:`ChatTemplateLimit` when a bound
    stops it, :class:`ChatTemplateError` for any other failure; both one line."""
    if not isinstance(chat_template, str):
        raise ChatTemplateError(f"{source}: the chat_template is {type(chat_template).__name__}, not text")
    if len(chat_template) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateLimit(f"{source}: the chat_template is {len(chat_template):,} characters long (at most "
                                f"{MAX_TEMPLATE_CHARS:,}); refused")
    import jinja2

    chars = [len(chat_template)]
    context = {k: _plain(v, chars) for k, v in variables.items()}
    plain_messages = _plain(list(messages), chars)
    if not all(isinstance(m, dict) for m in plain_messages):
        raise ChatTemplateError(f"{source}: every message must be a mapping of role, content ...")
    context.update(messages=[{k: v for k, v in m.items() if v is not None} for m in plain_messages],
                   tools=context.get("tools"), documents=context.get("documents"),
                   add_generation_prompt=bool(add_generation_prompt))
    limit = MIN_OUTPUT + OUTPUT_FACTOR * chars[0] if max_output is None else max_output
    budget = _Budget(TIME_LIMIT if time_limit is None else time_limit, limit)
    token = _BUDGET.set(budget)
    try:
        try:
            template = _compiled(chat_template)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"{source}: the chat_template is not valid Jinja (line {exc.lineno}): "
                                    f"{' '.join(str(exc.message).split())}") from None
        pieces: list[str] = []
        written = 0
        for piece in template.generate(**context):
            written += len(piece)
            if written > limit:
                raise _Stop(f"wrote more than {limit:,} characters")
            pieces.append(piece)
        return "".join(pieces)
    except _Stop as stop:
        raise ChatTemplateLimit(f"{source}: the chat_template was stopped: it {stop}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise ChatTemplateLimit(f"{source}: the chat_template was refused by the sandbox: "
                                f"{' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ChatTemplateLimit(f"{source}: the chat_template was stopped: it recursed without end (a macro or "
                                "recursive loop that calls itself)") from None
    except MemoryError:
        raise ChatTemplateLimit(f"{source}: the chat_template was stopped: it ran out of memory") from None
    except ChatTemplateError:
        raise
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"{source}: the chat_template cannot render this conversation: "
                                f"{' '.join(str(exc).split())}") from None
    except Exception as exc:  # noqa: BLE001 - a template can raise anything Python can; one line, named
        raise ChatTemplateError(f"{source}: the chat_template cannot render this conversation: "
                                f"{_one_line(exc)}") from None
    finally:
        _BUDGET.reset(token)
