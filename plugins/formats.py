"""Built-in dataset formats: the upstream QLoRA ones and the generic chat ones.

Each converter reads one record (a dict) and returns a :class:`~airo.core.Conversation`,
or ``None`` to skip a record with nothing to train on (the pipeline counts the skip).
A bad record raises ``ValueError`` with a message naming the field and the problem; the
pipeline adds the file and line.

Upstream QLoRA (``qlora.py``'s ``format_dataset``) trained ``input-output``,
``self-instruct`` and ``chip2`` as raw ``input`` + ``output`` text: their default template
is ``plain``. ``hh-rlhf`` and ``oasst1`` records are multi-turn transcripts with speaker
markers; they are parsed into turns and their default templates (``hh-rlhf``,
``oasst1``) put the same markers back, so the default rendering is the upstream text.
"""

from __future__ import annotations

import re

from airo.core import (ALPACA_INPUT_MARKER, Conversation, Message, check_record, exchange_messages, hookimpl,
                       make_conversation, message_objects, optional_str, record_metadata, require_keys, require_str,
                       text_content)

__all__ = ["FORMATS"]


# -- single-turn formats ---------------------------------------------------------------------

def convert_alpaca(record: dict) -> Conversation:
    check_record(record)
    instruction = require_str(record, "instruction")
    output = require_str(record, "output")
    extra = optional_str(record, "input")
    system = optional_str(record, "system")
    # The input rides in the user message after a marker the alpaca template recognises (it then
    # renders Stanford Alpaca's "paired with an input" prompt); as upstream, "" means no input.
    user = instruction + ALPACA_INPUT_MARKER + extra if extra else instruction
    return make_conversation(exchange_messages(user, output, system), record_metadata(record))


def _pair(record: dict, user_field: str, reply_field: str) -> Conversation:
    check_record(record)
    user = require_str(record, user_field)
    reply = require_str(record, reply_field)
    return make_conversation(exchange_messages(user, reply), record_metadata(record))


def convert_input_output(record: dict) -> Conversation:
    return _pair(record, "input", "output")


def convert_self_instruct(record: dict) -> Conversation:
    return _pair(record, "prompt", "completion")


CHIP2_SEPARATOR = "\n<bot>: "


def convert_chip2(record: dict) -> Conversation:
    """Exactly upstream: ``text.split('\\n<bot>: ')``; input = part 0 without ``<human>: ``,
    output = part 1."""
    check_record(record)
    text = require_str(record, "text")
    parts = text.split(CHIP2_SEPARATOR)
    if len(parts) < 2:
        raise ValueError("field 'text' has no '\\n<bot>: ' separator between the human and bot turns")
    return make_conversation(exchange_messages(parts[0].replace("<human>: ", ""), parts[1]), record_metadata(record))


# -- transcripts with speaker markers --------------------------------------------------------


def _parse_transcript(text: str, pattern: re.Pattern, field: str, speakers: dict[str, str]) -> list[Message]:
    pieces = pattern.split(text)
    head, rest = pieces[0], pieces[1:]
    if not rest:
        raise ValueError(f"field {field!r} has no speaker markers ({', '.join(s + ':' for s in speakers)})")
    if head.strip():
        raise ValueError(f"field {field!r} has text before the first speaker marker: {head[:40]!r}")
    messages = []
    for speaker, content in zip(rest[0::2], rest[1::2]):
        messages.append(Message(speakers[speaker], content[1:] if content.startswith(" ") else content))
    return messages


HH_PATTERN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
OASST_PATTERN = re.compile(r"### (Human|Assistant):")
_SPEAKERS = {"Human": "user", "Assistant": "assistant"}


def _transcript(record: dict, field: str, pattern: re.Pattern) -> Conversation | None:
    check_record(record)
    text = require_str(record, field)
    if not text.strip():
        return None
    return make_conversation(_parse_transcript(text, pattern, field, _SPEAKERS), record_metadata(record))


def convert_hh_rlhf(record: dict) -> Conversation | None:
    return _transcript(record, "chosen", HH_PATTERN)


def convert_oasst1(record: dict) -> Conversation | None:
    return _transcript(record, "text", OASST_PATTERN)


# -- generic chat formats ---------------------------------------------------------------------

SHAREGPT_ROLES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
}


def convert_sharegpt(record: dict) -> Conversation:
    messages = []
    for _, where, item in message_objects(record, "conversations"):
        role_key, text_key = ("from", "value") if "from" in item else ("role", "content")
        if role_key not in item:
            raise ValueError(f"{where} has neither 'from' nor 'role'")
        if text_key not in item:
            raise ValueError(f"{where} is missing {text_key!r}")
        speaker = item[role_key]
        role = SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise ValueError(f"{where}: unknown {role_key} {speaker!r}; expected one of "
                             f"{', '.join(SHAREGPT_ROLES)}")
        messages.append(Message(role, text_content(item[text_key], f"{where}.{text_key}")))
    return make_conversation(messages, record_metadata(record))


def convert_messages(record: dict) -> Conversation:
    messages = []
    for _, where, item in message_objects(record, "messages"):
        require_keys(item, ("role", "content"), where)
        role = item["role"]
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"{where}: unsupported role {role!r}; expected system, user or assistant")
        messages.append(Message(role, text_content(item["content"], f"{where}.content")))
    return make_conversation(messages, record_metadata(record))


# -- plain text -------------------------------------------------------------------------------

def convert_text(record: dict) -> Conversation | None:
    """Plain text (continued pre-training): ``{"text": ...}``, every token trained. The text is
    the reply to an empty prompt, so the ``plain`` template renders BOS + text + EOS and every
    token of the text is a label; an empty text is skipped (nothing to train on)."""
    check_record(record)
    text = require_str(record, "text")
    if not text.strip():
        return None
    return make_conversation(exchange_messages("", text), record_metadata(record))


# name, converter, default template, description
FORMATS = (
    ("alpaca", convert_alpaca, "alpaca",
     "Stanford Alpaca records: instruction, optional input, output (optional system)"),
    ("input-output", convert_input_output, "plain", "QLoRA input/output pairs, trained as raw text"),
    ("self-instruct", convert_self_instruct, "plain", "Self-Instruct prompt/completion pairs, trained as raw text"),
    ("chip2", convert_chip2, "plain", "OIG chip2: text '<human>: ...\\n<bot>: ...' (split as upstream QLoRA)"),
    ("hh-rlhf", convert_hh_rlhf, "hh-rlhf", "Anthropic HH-RLHF: the 'chosen' transcript, multi-turn"),
    ("oasst1", convert_oasst1, "oasst1", "openassistant-guanaco: text '### Human: ...### Assistant: ...'"),
    ("sharegpt", convert_sharegpt, "chatml",
     "ShareGPT conversations: from/value (human/gpt/system) or role/content"),
    ("messages", convert_messages, "chatml", "OpenAI-style {\"messages\": [{\"role\", \"content\"}, ...]}"),
    ("text", convert_text, "plain", "Plain text {\"text\": ...} (continued pre-training): every token trained"),
)


@hookimpl
def register_dataset_formats(register):
    for name, converter, template, description in FORMATS:
        register(name, converter, default_template=template, description=description)
