"""Helpers for dataset-format converters: reading fields of a record, building conversations.

A converter (``register_dataset_formats``) receives one record and raises ``ValueError``
naming the field and the problem; airo adds the file and line. These helpers raise exactly
such errors, so every format, built-in or third-party, words its errors the same way::

    from airo.core.records import check_record, exchange_messages, make_conversation, record_metadata, require_str

    def convert(record):
        check_record(record)
        messages = exchange_messages(require_str(record, "prompt"), require_str(record, "response"))
        return make_conversation(messages, record_metadata(record))

No heavy imports here: plugins import this module when airo builds ``airo --help``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from .types import Conversation, Message

__all__ = [
    "METADATA_KEYS", "check_record", "exchange_messages", "is_truthy", "make_conversation", "message_objects",
    "optional_str", "record_metadata", "require_keys", "require_str", "text_content", "type_name",
]

# What the pipeline reads from a conversation's metadata: the eval split is stratified by
# category (else source), --include_sources filters on source, and id names the record.
METADATA_KEYS = ("id", "category", "source")


def type_name(value: Any) -> str:
    """The JSON-ish name of ``value``'s type, for error messages (``None`` is "null")."""
    return "null" if value is None else type(value).__name__


def is_truthy(value: Any) -> bool:
    """A flag from any file type: CSV and TSV cells are strings, so "False" must be false."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "n", "off", "none", "null")
    return bool(value)


def check_record(record: Any) -> dict:
    """``record`` itself, after checking that it is an object (a JSON line may be a list)."""
    if not isinstance(record, dict):
        raise ValueError(f"record must be a JSON object, got {type_name(record)}")
    return record


def require_str(record: dict, field: str, *, nonblank: bool = False) -> str:
    """The string value of a required ``field``; ``nonblank`` also refuses whitespace only."""
    if field not in record or record[field] is None:
        raise ValueError(f"missing required field {field!r}")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a string, got {type_name(value)}")
    if nonblank and not value.strip():
        raise ValueError(f"field {field!r} is empty")
    return value


def optional_str(record: dict, field: str) -> str | None:
    """The string value of an optional ``field`` (None when missing or null)."""
    value = record.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a string, got {type_name(value)}")
    return value


def require_keys(item: dict, keys: Iterable[str], where: str) -> None:
    """Raise unless the object at ``where`` (e.g. ``"messages[2]"``) has every key of ``keys``."""
    for key in keys:
        if key not in item:
            raise ValueError(f"{where} is missing {key!r}")


def record_metadata(record: dict, metadata: dict | None = None) -> dict:
    """``metadata`` (a new dict when None) with the record's ``id``, ``category`` and ``source``
    added where it has none of its own; null and empty values count as absent."""
    out = {} if metadata is None else metadata
    for key in METADATA_KEYS:
        if key not in out and record.get(key) not in (None, ""):
            out[key] = record[key]
    return out


def exchange_messages(user: str, reply: str, system: str | None = None) -> list[Message]:
    """One exchange, after a system message when ``system`` is non-empty (as most formats
    read an empty system field: no system prompt)."""
    return ([Message("system", system)] if system else []) + [Message("user", user), Message("assistant", reply)]


def make_conversation(messages: list[Message], metadata: dict | None = None) -> Conversation:
    """A conversation, not validated here: role order is checked once, by the pipeline,
    after ``--expand_conversations`` has had its chance to drop a trailing user turn."""
    return Conversation(messages=messages, metadata=metadata or {})


def message_objects(record: Any, field: str, keys: str = "") -> Iterator[tuple[int, str, dict]]:
    """``(index, "field[index]", message)`` for each message object of ``record[field]``,
    after checking the record, the list and that each message is an object (``keys``
    names the keys it should have, for the error message)."""
    check_record(record)
    if field not in record or record[field] is None:
        raise ValueError(f"missing required field {field!r}")
    items = record[field]
    if not isinstance(items, list):
        raise ValueError(f"field {field!r} must be a list of messages, got {type_name(items)}")
    if not items:
        raise ValueError(f"field {field!r} is an empty conversation")
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object{' with ' + keys if keys else ''}, got {type_name(item)}")
        yield i, where, item


def text_content(value: Any, where: str) -> str:
    """A message's text: a string, or OpenAI-style content parts, all of type ``text``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise ValueError(f"{where} must be a string (or a list of text parts), got {type_name(value)}")
