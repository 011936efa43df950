"""An example third-party airo plugin.

It registers one dataset format, ``example-qa`` (records like ``{"question": ...,
"answer": ...}``), and one prompt template, ``example-qa`` (``Q: ...`` / ``A: ...``).
airo finds it through the entry point ``example = "airo_plugin_example"`` in the ``airo``
group (see pyproject.toml). Both are built with airo's toolkit for plugin authors, all of
it imported from ``airo.core``: the record helpers (``require_str`` ...) read the record's
fields with airo's own error messages, and ``MarkerTemplate`` derives the rendering and its
Jinja ``chat_template`` from one description. The names start with ``example-`` so they cannot take a name a user or
another plugin would pick.

Keep this module light: airo imports every plugin to build ``airo --help``. Anything
heavy (torch, transformers, datasets) belongs inside the functions that need it.
"""

from __future__ import annotations

from airo.core import Conversation, MarkerTemplate, hookimpl
from airo.core import (
    check_record,
    exchange_messages,
    is_truthy,
    make_conversation,
    optional_str,
    record_metadata,
    require_str,
)

__version__ = "0.1.0"

NAME = "example-qa"


# -- the dataset format -------------------------------------------------------------------

def qa_pairs(record: dict) -> Conversation | None:
    """``{"question": str, "answer": str, "system"?: str, "id"?: ...}`` -> one Conversation.

    A record with a true ``"skip"`` (``true``, or ``"yes"`` in a CSV cell) is skipped (airo
    counts it); a malformed record raises ``ValueError`` and airo reports it with the file
    and line.
    """
    check_record(record)
    if is_truthy(record.get("skip")):
        return None
    question = require_str(record, "question", nonblank=True)
    answer = require_str(record, "answer", nonblank=True)
    messages = exchange_messages(question, answer, optional_str(record, "system"))
    return make_conversation(messages, record_metadata(record))


# -- the prompt template ---------------------------------------------------------------------

# <s>[system\n\n]Q: question\nA: answer</s>Q: ...
# render() masks the prompt parts and trains each answer with its EOS; chat_template is the
# same text in Jinja for inference engines (one per way of writing the opening BOS, so airo's
# save action can keep the one that matches the tokenizer).
QA_TEMPLATE = MarkerTemplate(
    name=NAME,
    description="Q: question / A: answer (example plugin)",
    begin="{bos}",
    system="{content}\n\n",
    user="Q: {content}\n",
    assistant_open="A: ",
    reply="{content}{eos}",
)


# -- the hooks airo calls ------------------------------------------------------------------

@hookimpl
def register_dataset_formats(register):
    register(NAME, qa_pairs, default_template=NAME, description='{"question", "answer"} records (example plugin)')


@hookimpl
def register_prompt_templates(register):
    register(NAME, QA_TEMPLATE, description=QA_TEMPLATE.description)
