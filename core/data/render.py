"""Conversation -> example: the template plugin renders, the tokenizer makes ids and labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError, PluginError
from ..types import Conversation, Segment, TemplateEntry
from .plan import Plan
from .tokenize import Dropped, Tokenized, tokenize_segments_batch, tokenize_source_target_batch

if TYPE_CHECKING:
    from ..config import TrainConfig


class TemplateError(Exception):
    """A prompt template failed on one conversation: a bad record, located by the caller."""


def _apply_template(entry: TemplateEntry, method: str, conv: Conversation, bos: str, eos: str):
    try:
        result = getattr(entry.template, method)(conv, bos_token=bos, eos_token=eos)
    except (ConfigError, PluginError):
        raise
    except ValueError as exc:  # the documented way to refuse a conversation
        raise TemplateError(f"template {entry.name!r} (plugin {entry.plugin}): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a template tripping over odd input is still a bad record
        raise TemplateError(f"template {entry.name!r} (plugin {entry.plugin}) failed on this record: "
                            f"{type(exc).__name__}: {exc}") from None
    if method == "source_target":
        ok = isinstance(result, (tuple, list)) and len(result) == 2 and all(isinstance(x, str) for x in result)
        expected = "a (source, target) pair of strings"
    else:
        ok = isinstance(result, (tuple, list)) and all(isinstance(x, Segment) for x in result)
        expected = "a list of Segment"
    if not ok:
        raise PluginError(f"template {entry.name!r} (plugin {entry.plugin}): {method}() returned "
                          f"{type(result).__name__}; it must return {expected}")
    return result


def _render(plan: Plan, conv: Conversation, bos: str, eos: str):
    """What the tokenizer gets for ``conv``: a (source, target) pair for the reference
    tokenization, else the list of segments. Raises TemplateError."""
    method = "source_target" if plan.tokenization == "reference" else "render"
    return _apply_template(plan.template, method, conv, bos, eos)


def tokenize_rendered(tokenizer, plan: Plan, rendered: list, config: TrainConfig, *,
                      chars_per_token: int | None = None) -> list[Tokenized | Dropped]:
    """Examples (or the ``Dropped`` ruling each out) for many rendered conversations, in one
    batched tokenizer call per text kind."""
    data = config.data
    common = dict(model_max_len=data.model_max_len, skip_excess_length=data.skip_excess_length,
                  train_on_source=data.train_on_source, chars_per_token=chars_per_token)
    if plan.tokenization == "reference":
        return tokenize_source_target_batch(tokenizer, rendered, **common)
    return tokenize_segments_batch(tokenizer, rendered, mode=plan.train_on, **common)


def tokenize_conversation(tokenizer, plan: Plan, conv: Conversation, config: TrainConfig, *,
                          chars_per_token: int | None = None) -> Tokenized:
    """One example. Raises Dropped (a length or labels rule) or TemplateError (the template
    failed on this conversation). ``chars_per_token``: see ``tokenize.max_chars_per_token``."""
    rendered = _render(plan, conv, tokenizer.bos_token or "", tokenizer.eos_token or "")
    (result,) = tokenize_rendered(tokenizer, plan, [rendered], config, chars_per_token=chars_per_token)
    if isinstance(result, Dropped):
        raise result
    return result

