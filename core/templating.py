"""Building blocks for prompt templates: segments, Jinja chat templates, BOS renderings.

A template (``register_prompt_templates``) turns a validated :class:`~airo.core.Conversation`
into text segments (the exact text the model sees, special-token strings included) and
exports the Jinja ``chat_template`` inference engines use. The built-in templates are made
of what this module offers, and so can a plugin's:

- :class:`MarkerTemplate`: a template made of fixed strings around each message; its
  ``render`` and ``chat_template`` come from one description, so they cannot drift apart.
- :class:`BaseTemplate` + :class:`SegmentBuilder`: for a template with rules of its own
  (write ``_render`` and ``_chat_template(variant)``).
- :func:`jinja_literal`, :data:`JINJA_ROLE_CHECK`, :func:`jinja_split_system`,
  :func:`leading_bos`: pieces of a hand-written ``chat_template``.
- :class:`ReferenceTemplate`: the optional ``source_target`` a template may add.
- :func:`render_chat_template`: render a ``chat_template`` (a plugin's, a tokenizer's) the
  way transformers does, in a sandbox bounded in time and size (:mod:`airo.core.template_sandbox`).

Conventions that keep ``render`` and ``chat_template`` in agreement:

- A reply segment holds the assistant's text and its end-of-turn marker (``eos_token``,
  ``<|im_end|>``, ``<|eot_id|>``): the model must learn to stop.
- Whitespace that separates a reply from the prompt goes *into the reply segment*
  (``"ASSISTANT:"`` + ``" reply</s>"``), because SentencePiece glues a leading space
  to the following word; the pipeline assigns a token to the segment holding its last
  character.
- The generation prompt (``add_generation_prompt=True``) is exactly the text of every
  segment before the last reply segment.

A template that opens the conversation with BOS builds its ``chat_template`` for each
way of writing that BOS (:data:`LEADING_BOS`) and offers them all through
``chat_template_variants()``; the ``save`` action keeps the one that reproduces the
training prompt ids with the run's tokenizer (see ``airo.core.chat_parity``).

No heavy imports here: plugins import this module when airo builds ``airo --help``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .template_sandbox import ChatTemplateError, render_chat_template
from .types import Conversation, PromptTemplate, Segment

__all__ = [
    "ALPACA_INPUT_MARKER", "BaseTemplate", "ChatTemplateError", "JINJA_ROLE_CHECK", "LEADING_BOS", "MarkerTemplate",
    "ReferenceTemplate", "SegmentBuilder", "jinja_literal", "jinja_split_system", "leading_bos", "render_chat_template",
]

# The alpaca format stores a record's optional input inside the user message after this
# marker; a template given it as ``input_marker`` recognises it (the built-in alpaca template
# then reproduces Stanford Alpaca's "### Input:" section exactly).
ALPACA_INPUT_MARKER = "\n\n### Input:\n"


@runtime_checkable
class ReferenceTemplate(PromptTemplate, Protocol):
    """A prompt template that also offers the reference tokenization of the last reply.

    ``source_target(conversation, *, bos_token, eos_token) -> (source, target)``: airo
    tokenizes ``source`` with the tokenizer's special tokens (BOS added) and ``target``
    without, then appends EOS itself, so both strings leave out the leading BOS and the
    trailing EOS. ``--train_on last_reply`` (and ``auto``) use it when a template has it;
    ``render`` stays the rendering of everything else (every reply, previews).
    """

    def source_target(self, conversation: Conversation, *, bos_token: str, eos_token: str) -> tuple[str, str]: ...


# -- segments ----------------------------------------------------------------------------------


class SegmentBuilder:
    """Collects segments; adjacent pieces of the same kind and turn are merged.

    Empty prompt pieces are dropped; a reply segment is always kept (even when empty),
    so there is exactly one reply segment per assistant turn.
    """

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def prompt(self, text: str, turn: int) -> None:
        if not text:
            return
        last = self.segments[-1] if self.segments else None
        if last is not None and not last.reply and last.turn == turn:
            self.segments[-1] = Segment(last.text + text, reply=False, turn=turn)
        else:
            self.segments.append(Segment(text, reply=False, turn=turn))

    def reply(self, text: str, turn: int) -> None:
        self.segments.append(Segment(text, reply=True, turn=turn))


class BaseTemplate:
    """A template: ``render`` validates the conversation, then ``_render`` builds its segments.

    Subclasses implement ``_render(conversation, builder, *, bos_token, eos_token)`` and
    either ``_chat_template(variant)`` (the Jinja with the opening BOS written as
    :func:`leading_bos` ``(variant)``; ``chat_template`` is its ``"default"``) or a
    ``chat_template`` of their own. The Jinja follows the Hugging Face conventions:
    ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``, ``raise_exception``.
    """

    name: str = ""
    description: str = ""

    @property
    def chat_template(self) -> str:
        return self._chat_template("default")

    def _chat_template(self, variant: str) -> str:
        raise NotImplementedError(f"{type(self).__name__} must define _chat_template(variant) or chat_template")

    def chat_template_variants(self) -> dict[str, str]:
        """Renderings of ``chat_template`` to choose from, the template's own first: one per
        :data:`LEADING_BOS` when the template builds them, else only its ``chat_template``."""
        if type(self)._chat_template is BaseTemplate._chat_template:
            return {"default": self.chat_template}
        return {variant: self._chat_template(variant) for variant in LEADING_BOS}

    def render(self, conversation: Conversation, *, bos_token: str, eos_token: str) -> list[Segment]:
        conversation.validate()
        builder = SegmentBuilder()
        self._render(conversation, builder, bos_token=bos_token, eos_token=eos_token)
        return builder.segments

    def _render(self, conversation: Conversation, out: SegmentBuilder, *, bos_token: str, eos_token: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _render(conversation, out, *, bos_token, "
                                  "eos_token)")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# -- Jinja pieces ------------------------------------------------------------------------------


def jinja_literal(text: str) -> str:
    """``text`` as a Jinja string literal (Jinja decodes backslash escapes like Python)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r") + "'"


# The role check every chat_template here starts its loop with: an engine given messages the
# template was not trained on gets an error, not a silently different prompt.
JINJA_ROLE_CHECK = (
    "{%- if message['role'] != ('user' if loop.index0 % 2 == 0 else 'assistant') -%}"
    "{{- raise_exception('Conversation roles must be: an optional system message first, then user and "
    "assistant alternating, starting with user') -}}"
    "{%- endif -%}"
)


def jinja_split_system(default: str = "none") -> str:
    """Jinja that sets ``system`` (the first message's content when it is a system message,
    else the Jinja expression ``default``, which may use ``loop_messages``) and
    ``loop_messages`` (the messages after the system message)."""
    return "\n".join([
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set system = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}",
        "{%- else -%}",
        # loop_messages first: ``default`` may look at it (the alpaca input preamble does)
        "{%- set loop_messages = messages -%}{%- set system = " + default + " -%}",
        "{%- endif -%}",
    ])


# Ways to write the BOS that opens a conversation. The reference tokenization
# (``source_target``) trains on [BOS] + tok(source), and ``source`` starts a text of its
# own: a SentencePiece tokenizer gives its first word a word-boundary marker unless it
# starts with a space. In the rendered ``<s>[INST]`` only a legacy llama tokenizer adds
# that marker after the BOS, a non-legacy one needs the space written out, and with a
# tokenizer whose special tokens add no BOS the model trained without one.
LEADING_BOS = ("default", "space-after-bos", "no-bos")


def leading_bos(variant: str, following: str | None = None) -> str:
    """The Jinja expression of the opening BOS written the :data:`LEADING_BOS` way ``variant``.

    ``following`` is the Jinja expression of the text after the BOS when that text may
    start with a space (then no space is added, as SentencePiece adds no marker); None
    when it never does.
    """
    if variant == "default":
        return "bos_token"
    if variant == "no-bos":
        return "''"
    if variant == "space-after-bos":
        return "bos_token + ' '" if following is None else f"bos_token + ('' if ({following}).startswith(' ') else ' ')"
    raise ValueError(f"unknown leading BOS rendering {variant!r}; expected one of {', '.join(LEADING_BOS)}")


# -- templates made of fixed strings -----------------------------------------------------------

_TOKEN_RE = re.compile(r"(\{bos\}|\{eos\})")
_JINJA_TOKENS = {"{bos}": "bos_token", "{eos}": "eos_token"}


def _split_content(part: str) -> tuple[str, str]:
    if part.count("{content}") != 1:
        raise ValueError(f"template part {part!r} must contain {{content}} exactly once")
    prefix, suffix = part.split("{content}")
    return prefix, suffix


@dataclass(frozen=True, kw_only=True)
class MarkerTemplate(BaseTemplate):
    """A template made of fixed strings around each message.

    The rendered text is::

        begin + system_part            (when a system message, or a default, exists)
        for each exchange:  user_part + assistant_open  |  reply_part  |  after_reply
                            (prompt)                       (reply)        (prompt)

    ``system``, ``user`` and ``reply`` contain ``{content}`` once; every fixed string may
    contain ``{bos}``/``{eos}``, replaced by the tokenizer's token strings (``bos_token``/
    ``eos_token`` in Jinja). ``strip`` strips each message's content. When there is no
    system message, ``default_system`` is used (``None``: no system part);
    ``default_system_with_input`` replaces it when the first user message contains
    ``input_marker`` (the alpaca "paired with an input" preamble). A ``begin`` that starts
    with ``{bos}`` gets one ``chat_template`` per :data:`LEADING_BOS`.
    """

    name: str
    description: str
    user: str
    assistant_open: str
    reply: str
    begin: str = ""
    system: str = "{content}"
    after_reply: str = ""
    default_system: str | None = None
    default_system_with_input: str | None = None
    input_marker: str | None = None
    strip: bool = False

    # -- rendering -------------------------------------------------------------------------

    def _system_for(self, conversation: Conversation) -> str | None:
        if conversation.system is not None:
            return conversation.system
        first_user = conversation.turns()[0][0]
        if self.input_marker is not None and self.default_system_with_input is not None \
                and self.input_marker in first_user:
            return self.default_system_with_input
        return self.default_system

    def _render(self, conversation: Conversation, out: SegmentBuilder, *, bos_token: str, eos_token: str) -> None:
        def fixed(text: str) -> str:
            return text.replace("{bos}", bos_token).replace("{eos}", eos_token)

        def wrap(part: str, content: str) -> str:
            prefix, suffix = _split_content(part)
            return fixed(prefix) + (content.strip() if self.strip else content) + fixed(suffix)

        out.prompt(fixed(self.begin), 0)
        system = self._system_for(conversation)
        if system is not None:
            out.prompt(wrap(self.system, system), 0)
        turns = conversation.turns()
        for turn, (user, reply) in enumerate(turns):
            out.prompt(wrap(self.user, user) + fixed(self.assistant_open), turn)
            out.reply(wrap(self.reply, reply), turn)
            # text after a reply opens the next exchange's prompt (or trails the last one)
            out.prompt(fixed(self.after_reply), min(turn + 1, len(turns) - 1))

    # -- the same thing in Jinja ----------------------------------------------------------

    def _expr(self, part: str, content: str | None = None) -> str:
        """A Jinja expression for ``part``; ``content`` is the Jinja expression of the message."""
        if content is not None:
            prefix, suffix = _split_content(part)
            pieces = [prefix, None, suffix]
        else:
            pieces = [part]
        terms: list[str] = []
        for piece in pieces:
            if piece is None:
                terms.append(f"({content} | trim)" if self.strip else content)
                continue
            for bit in _TOKEN_RE.split(piece):
                if bit in _JINJA_TOKENS:
                    terms.append(_JINJA_TOKENS[bit])
                elif bit:
                    terms.append(jinja_literal(bit))
        return " + ".join(terms) if terms else "''"

    def chat_template_variants(self) -> dict[str, str]:
        if not self.begin.startswith("{bos}"):
            return {"default": self.chat_template}
        return super().chat_template_variants()

    def _opening_bos(self, variant: str) -> str:
        rest = self.begin.removeprefix("{bos}")
        if rest:
            return leading_bos(variant, jinja_literal(rest)) + " + " + self._expr(rest)
        first_user = "(loop_messages[0]['content'] if loop_messages else '')"
        following = (f"({self._expr(self.system, 'system')}) if system is not none "
                     f"else ({self._expr(self.user, first_user)})")
        return leading_bos(variant, following)

    def _chat_template(self, variant: str) -> str:
        default = jinja_literal(self.default_system) if self.default_system is not None else "none"
        if self.input_marker is not None and self.default_system_with_input is not None:
            default = (f"({jinja_literal(self.default_system_with_input)} if (loop_messages and "
                       f"{jinja_literal(self.input_marker)} in loop_messages[0]['content']) else {default})")
        parts = [jinja_split_system(default)]
        if self.begin.startswith("{bos}"):
            parts.append("{{- " + self._opening_bos(variant) + " -}}")
        elif self.begin:
            parts.append("{{- " + self._expr(self.begin) + " -}}")
        parts += [
            "{%- if system is not none -%}{{- " + self._expr(self.system, "system") + " -}}{%- endif -%}",
            "{%- for message in loop_messages -%}",
            JINJA_ROLE_CHECK,
            "{%- if message['role'] == 'user' -%}",
            "{{- " + self._expr(self.user, "message['content']") + " -}}",
            "{%- else -%}",
            "{{- " + " + ".join(filter(None, [
                self._expr(self.assistant_open) if self.assistant_open else "",
                self._expr(self.reply, "message['content']"),
                self._expr(self.after_reply) if self.after_reply else "",
            ])) + " -}}",
            "{%- endif -%}",
            "{%- endfor -%}",
        ]
        if self.assistant_open:
            parts.append("{%- if add_generation_prompt -%}{{- " + self._expr(self.assistant_open) + " -}}{%- endif -%}")
        return "\n".join(parts)
