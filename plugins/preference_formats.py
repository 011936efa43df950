"""Dataset formats of preference data: pairs (``preference``, ``hh-rlhf``) and labelled single
replies (``kto``), registered like every other format with the record kind they give.

The conventions are those of the public preference sets: a ``prompt`` as a string or a
message list (multi-turn prefixes included) with ``chosen``/``rejected`` replies as strings,
as one assistant message or as the whole conversation repeated (the prompt followed by
the reply); Anthropic's HH transcripts (``\\n\\nHuman: ... \\n\\nAssistant: ...``), the two of
a record sharing everything before their last reply; ``prompt``/``completion``/``label``
for KTO. A record that breaks them raises ``ValueError`` (airo adds the file and line);
identical or empty replies are counted as skipped by the pipeline, with the reason.
"""

from __future__ import annotations

import re
from typing import Any

from airo.core import (Message, PreferencePair, UnpairedExample, check_record, hookimpl, message_objects, optional_str,
                       record_metadata, require_keys, text_content, type_name)

ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def _messages(record: dict, field: str) -> list[Message]:
    messages = []
    for _, where, item in message_objects(record, field, keys="role and content"):
        require_keys(item, ("role", "content"), where)
        role = ROLES.get(item["role"]) if isinstance(item["role"], str) else None
        if role is None:
            raise ValueError(f"{where}: unknown role {item['role']!r}; expected system, user or assistant")
        messages.append(Message(role, text_content(item["content"], f"{where}.content")))
    return messages


def _prompt(record: dict, system: str | None) -> list[Message] | None:
    """The conversation before the reply, from ``prompt`` (a string or a message list) and an
    optional ``system``; None when the record has no prompt (the replies then carry it)."""
    value = record.get("prompt")
    if value is None:
        return None
    if isinstance(value, str):
        prefix = [Message("user", value)]
    elif isinstance(value, list):
        prefix = _messages(record, "prompt")
    else:
        raise ValueError(f"field 'prompt' must be a string or a list of messages, got {type_name(value)}")
    if system and prefix[0].role != "system":
        prefix.insert(0, Message("system", system))
    elif system:
        raise ValueError("the record has both a 'system' field and a system message in 'prompt'")
    if prefix[-1].role != "user":
        raise ValueError("field 'prompt' must end with a user message (the reply answers it)")
    return prefix


def _reply(record: dict, field: str, prefix: list[Message] | None) -> tuple[list[Message] | None, str]:
    """(the conversation the reply carries before it, or None; the reply's text)."""
    value = record.get(field)
    if value is None:
        raise ValueError(f"missing required field {field!r}")
    if isinstance(value, str):
        return None, value
    if not isinstance(value, list):
        raise ValueError(f"field {field!r} must be a string or a list of messages, got {type_name(value)}")
    messages = _messages(record, field)
    if messages[-1].role != "assistant":
        raise ValueError(f"field {field!r} must end with an assistant message (the reply)")
    carried = messages[:-1] or None
    if carried is not None and prefix is not None and carried != prefix:
        raise ValueError(f"field {field!r} repeats a conversation that differs from 'prompt' before its reply")
    return carried, messages[-1].content


def preference(record: Any) -> PreferencePair:
    """``{"prompt", "chosen", "rejected"}`` (+ optional ``system``): strings or message lists."""
    check_record(record)
    prefix = _prompt(record, optional_str(record, "system"))
    chosen_prefix, chosen = _reply(record, "chosen", prefix)
    rejected_prefix, rejected = _reply(record, "rejected", prefix)
    if prefix is None:
        if chosen_prefix is None or rejected_prefix is None:
            raise ValueError("missing required field 'prompt' (or 'chosen' and 'rejected' as whole conversations)")
        if chosen_prefix != rejected_prefix:
            raise ValueError("'chosen' and 'rejected' differ before their last reply; a pair answers one "
                             "conversation")
        prefix = chosen_prefix
    if prefix[-1].role != "user":
        raise ValueError("the conversation before the replies must end with a user message")
    return PreferencePair(prefix, chosen, rejected, record_metadata(record))


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def hh_transcript(text: Any, field: str) -> list[Message]:
    """An Anthropic HH transcript as messages: ``\\n\\nHuman: ...`` and ``\\n\\nAssistant: ...``
    alternating, from the human's first turn to the assistant's last."""
    if not isinstance(text, str):
        raise ValueError(f"field {field!r} must be a transcript string, got {type_name(text)}")
    marks = list(_HH_TURN.finditer(text))
    if not marks:
        raise ValueError(f"field {field!r} has no '\\n\\nHuman: ' / '\\n\\nAssistant: ' turns")
    if text[:marks[0].start()].strip():
        raise ValueError(f"field {field!r} has text before its first 'Human:' turn")
    messages = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        role = "user" if mark.group(1) == "Human" else "assistant"
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"field {field!r}: turn {i + 1} is {mark.group(1)}'s; Human and Assistant must alternate, "
                             "Human first")
        messages.append(Message(role, text[mark.end():end].strip()))
    if messages[-1].role != "assistant":
        raise ValueError(f"field {field!r} must end with an 'Assistant:' turn")
    return messages


def hh_rlhf(record: Any) -> PreferencePair:
    """``{"chosen": transcript, "rejected": transcript}``: two HH transcripts sharing a prefix."""
    check_record(record)
    chosen = hh_transcript(record.get("chosen"), "chosen") if "chosen" in record else None
    rejected = hh_transcript(record.get("rejected"), "rejected") if "rejected" in record else None
    if chosen is None or rejected is None:
        raise ValueError(f"missing required field {'chosen' if chosen is None else 'rejected'!r}")
    if chosen[:-1] != rejected[:-1]:
        turn = next((i for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1])) if a != b),
                    min(len(chosen), len(rejected)) - 1)
        raise ValueError(f"the chosen and rejected transcripts differ before their last reply (turn {turn + 1}); "
                         "a pair answers one conversation")
    return PreferencePair(chosen[:-1], chosen[-1].content, rejected[-1].content, record_metadata(record))


_TRUE, _FALSE = ("true", "1", "yes", "desirable"), ("false", "0", "no", "undesirable")


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:  # CSV / TSV cells
        return value.strip().lower() in _TRUE
    raise ValueError(f"field 'label' must be true or false (desirable or not), got {value!r}")


def kto(record: Any) -> UnpairedExample:
    """``{"prompt", "completion", "label"}``: one reply, desirable (true) or not (false)."""
    check_record(record)
    prefix = _prompt(record, optional_str(record, "system"))
    carried, reply = _reply(record, "completion", prefix)
    prefix = prefix or carried
    if prefix is None:
        raise ValueError("missing required field 'prompt'")
    if "label" not in record:
        raise ValueError("missing required field 'label'")
    return UnpairedExample(prefix, reply, _label(record["label"]), record_metadata(record))


@hookimpl
def register_dataset_formats(register):
    register("preference", preference, default_template="chatml", record_kind="preference",
             description='{"prompt", "chosen", "rejected"}: strings or message lists (multi-turn prompts)')
    register("hh-rlhf-pairs", hh_rlhf, default_template="hh-rlhf", record_kind="preference",
             description='Anthropic HH {"chosen", "rejected"} transcripts sharing their conversation')
    register("kto", kto, default_template="chatml", record_kind="unpaired",
             description='{"prompt", "completion", "label"}: one reply labelled desirable or not (KTO)')
