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

from typing import Any

from .sandbox_budget import (_BUDGET, MAX_TEMPLATE_CHARS, MIN_OUTPUT, OUTPUT_FACTOR, TIME_LIMIT, ChatTemplateError,
                             ChatTemplateLimit, _Budget, _Stop)
from .sandbox_environment import _compiled

__all__ = ["ChatTemplateError", "ChatTemplateLimit", "MAX_TEMPLATE_CHARS", "TIME_LIMIT", "render_chat_template",
           "tokenizer_template_variables"]

# The bounds (limits, budget, checks) are airo.core.sandbox_budget, the environment they are
# built into airo.core.sandbox_environment. TIME_LIMIT is read here at each rendering, so
# setting template_sandbox.TIME_LIMIT changes the limit of the renderings that follow.

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
