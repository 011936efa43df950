"""How a plugin's failures are told: the errors and the warning class, who a plugin is
(its entry point and distribution, and how to block it), what an exception says, and the
wrapper that makes a registered callable's failure name its plugin. The plugin manager that
uses them is :mod:`airo.core.plugins`."""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import os
import re
import sys
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import AiroError, PluginError
from .registry import PluginInfo


class DuplicateName(PluginError):
    """Two registrations of one name (an error under AIRO_STRICT_PLUGINS; otherwise a warning)."""


class PluginCallError(PluginError):
    """A registered callable (loader, action, patch) raised; the cause is chained."""


class PluginWarning(UserWarning):
    """A plugin, or part of one, was skipped; the rest of airo goes on without it."""


# -- describing plugins and their failures ---------------------------------------------------

def _env_list(var: str) -> list[str]:
    return [x.strip() for x in os.environ.get(var, "").split(",") if x.strip()]


def _strict() -> bool:
    return os.environ.get("AIRO_STRICT_PLUGINS", "").lower() in ("1", "true", "yes")


def _who(info: PluginInfo, *, block: bool = False) -> str:
    """``plugin 'x' (distribution d 1.0)``; with ``block``, also how to block it, for
    messages that leave the choice between two plugins to the user."""
    about = f"distribution {' '.join(filter(None, (info.distribution, info.version)))}"
    if block:
        about += f"; {_block_hint(info)} blocks it"
    return f"plugin {info.name!r} ({about})"


def _block_hint(info: PluginInfo) -> str:
    return f"AIRO_DISABLE_PLUGINS={info.name}"


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` on one line; a ``sys.exit()`` says so, since its message is only a code."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: sys.exit({exc.code!r}) was called"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's OutOfMemoryError (matched by name: torch may not be imported).

    Running out of memory is the machine's limit, not a plugin's bug, so it is never
    reported as the plugin's failure."""
    return isinstance(exc, MemoryError) or any(
        cls.__name__ == "OutOfMemoryError" and cls.__module__.split(".")[0] == "torch" for cls in type(exc).__mro__)


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None


@contextlib.contextmanager
def stdout_to_stderr():
    """Inside the block, whatever is written to stdout goes to stderr: ``sys.stdout`` is
    ``sys.stderr``, and when stdout is file descriptor 1, descriptor 1 is a copy of 2 (so
    ``os.write(1, ...)``, C extensions and child processes are sent there too). Yields the
    real ``sys.stdout``."""
    real = sys.stdout
    out_fd, err_fd = _fileno(real), _fileno(sys.stderr)
    saved = None
    if out_fd == 1 and err_fd is not None and err_fd != 1:
        try:
            real.flush()
            saved = os.dup(1)
            os.dup2(err_fd, 1)
        except OSError:
            saved = None
    sys.stdout = sys.stderr
    try:
        yield real
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        sys.stdout = real
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _guarded(fn: Callable[..., Any], info: PluginInfo, what: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AiroError:
            raise  # raised on purpose, with a message for the user
        except (Exception, SystemExit) as exc:  # KeyboardInterrupt is the user's, never the plugin's
            if out_of_memory(exc):
                raise
            raise PluginCallError(f"{_who(info)}: {what} failed: {describe_exception(exc)}") from exc

    return call


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith("register_"))


def _bad_arguments_problem(exc: pluggy.PluginValidationError) -> str:
    text = " ".join(str(exc).split())
    hook = re.search(r"for hook '(\w+)'", text)
    spec = getattr(hookspecs, hook.group(1), None) if hook else None
    expected = f"; airo calls {spec.__name__}{inspect.signature(spec)}" if spec else ""
    return f"does not match airo's hook specs: {text}{expected}"


def _unknown_hook_problem(names: list[str]) -> str:
    hooks = _hook_names()
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, hooks, n=1)
        parts.append(name + (f" (did you mean {close[0]}?)" if close else ""))
    return (f"implements {', '.join(parts)}, {'a hook' if len(names) == 1 else 'hooks'} airo does not define; "
            f"airo's hooks are {', '.join(hooks)}")
