"""An example third-party airo plugin.

It registers one dataset format, ``qa-pairs`` (records like ``{"question": ..., "answer":
...}``), and one prompt template, ``qa`` (``Q: ...`` / ``A: ...``). airo finds it through
the entry point ``example = "airo_plugin_example"`` in the ``airo`` group (see
pyproject.toml).

Keep this module light: airo imports every plugin to build ``airo --help``. Anything
heavy (torch, transformers, datasets) belongs inside the functions that need it.
"""

from __future__ import annotations

from airo.core import Conversation, Message, Segment, hookimpl

__version__ = "0.1.0"


# -- the dataset format -------------------------------------------------------------------

def _text(record: dict, key: str, *, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{key!r} is empty")
    return value


def qa_pairs(record: dict) -> Conversation | None:
    """``{"question": str, "answer": str, "system"?: str, "id"?: ...}`` -> one Conversation.

    A record with ``"skip": true`` is skipped (airo counts it); a malformed record raises
    ``ValueError`` and airo reports it with the file and line.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if record.get("skip") is True:
        return None
    question = _text(record, "question")
    answer = _text(record, "answer")
    system = _text(record, "system", required=False)
    messages = [Message("system", system)] if system else []
    messages += [Message("user", question), Message("assistant", answer)]
    metadata = {key: record[key] for key in ("id", "source", "category") if key in record}
    return Conversation(messages=messages, metadata=metadata)


# -- the prompt template ---------------------------------------------------------------------

class QATemplate:
    """``<s>[system\\n\\n]Q: question\\nA: answer</s>Q: ...``

    ``render`` returns the segments airo tokenizes: the prompt parts are masked, the
    replies (each followed by the EOS token) are trained. ``chat_template`` is the same
    format as Jinja, for inference engines; it renders the identical prompt text.
    """

    chat_template = (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ 'Q: ' + message['content'] + '\\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ 'A: ' + message['content'] + eos_token }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
    )

    def render(self, conversation: Conversation, *, bos_token: str, eos_token: str) -> list[Segment]:
        conversation.validate()
        prefix = bos_token
        if conversation.system is not None:
            prefix += conversation.system + "\n\n"
        segments: list[Segment] = []
        for turn, (question, answer) in enumerate(conversation.turns()):
            segments.append(Segment(f"{prefix}Q: {question}\nA: ", reply=False, turn=turn))
            segments.append(Segment(answer + eos_token, reply=True, turn=turn))
            prefix = ""
        return segments


# -- the hooks airo calls ------------------------------------------------------------------

@hookimpl
def register_dataset_formats(register):
    register("qa-pairs", qa_pairs, default_template="qa",
             description='{"question", "answer"} records (example plugin)')


@hookimpl
def register_prompt_templates(register):
    register("qa", QATemplate(), description="Q: question / A: answer (example plugin)")
