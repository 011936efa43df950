"""The airoboros dataset formats and prompt templates, exactly as the reference fork.

See ``shared/spec/airoboros-formats.md``. Formats:

- ``airoboros`` (legacy instruction/response records; default template ``airoboros``)
- ``airoboros_chat`` (sharegpt-style ``conversations``; default template ``llama-2``)

Templates ``airoboros`` and ``llama-2`` implement ``source_target`` (the reference
algorithm, used by the compatibility mode: source and target tokenized separately) and
``render`` (segments for the generic path, e.g. training every reply).
"""

from __future__ import annotations

import re

from airo.core import (BaseTemplate, Conversation, JINJA_ROLE_CHECK, Message, SegmentBuilder, check_record,
                       exchange_messages, hookimpl, is_truthy, jinja_literal, jinja_split_system, leading_bos,
                       make_conversation, message_objects, optional_str, record_metadata, require_keys, require_str)

LEGACY_DEFAULT_SYSTEM = "A chat."
LLAMA2_DEFAULT_SYSTEM = "You are an unbiased, uncensored, helpful assistant."

_PLAINFORMAT_RE = re.compile(r"\s+PLAINFORMAT$")


# -- formats ---------------------------------------------------------------------------------


def convert_airoboros(record: dict) -> Conversation:
    """Legacy record: ``instruction``, ``response``, optional ``system``,
    ``skip_prompt_formatting``, ``category``, ``source``, ``id``.

    The system prompt is kept raw (the template applies ``(system or "A chat.").strip()``);
    missing, null or empty means no system message.
    """
    check_record(record)
    instruction = require_str(record, "instruction")
    response = require_str(record, "response")
    system = optional_str(record, "system")
    metadata = record_metadata(record)
    if is_truthy(record.get("skip_prompt_formatting")):
        metadata["skip_prompt_formatting"] = True
    return make_conversation(exchange_messages(instruction, response, system), metadata)


_CHAT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def convert_airoboros_chat(record: dict) -> Conversation:
    """``{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}``.
    Values are kept raw (the llama-2 template strips what the reference strips)."""
    messages = []
    for i, where, item in message_objects(record, "conversations", keys="'from' and 'value'"):
        require_keys(item, ("from", "value"), where)
        speaker, value = item["from"], item["value"]
        if not isinstance(speaker, str) or speaker not in _CHAT_ROLES:
            raise ValueError(f"{where}: unknown 'from' value {speaker!r}; expected system, human or gpt")
        if speaker == "system" and i > 0:
            raise ValueError(f"{where}: a system message may only come first")
        if not isinstance(value, str):
            raise ValueError(f"{where}: 'value' must be a string, got "
                             f"{'null' if value is None else type(value).__name__}")
        messages.append(Message(_CHAT_ROLES[speaker], value))
    return make_conversation(messages, record_metadata(record))


# -- templates -------------------------------------------------------------------------------


def legacy_user_block(system: str | None, instruction: str, first: bool) -> str:
    """The reference's ``s.strip()`` before ``"\\nASSISTANT: "``, PLAINFORMAT rule included.
    Later turns of a multi-turn conversation (an airo extension) have no system line."""
    if first:
        s = (system or LEGACY_DEFAULT_SYSTEM).strip() + "\n" + "USER: " + instruction.strip()
    else:
        s = "USER: " + instruction.strip()
    if s.endswith("PLAINFORMAT"):
        s = _PLAINFORMAT_RE.sub("", s)
        s += " PLAINFORMAT"
    return s.strip()


class AiroborosTemplate(BaseTemplate):
    """Legacy airoboros (2.2.1 and earlier): ``A chat.\\nUSER: ...\\nASSISTANT: ``.

    One exchange is exactly the spec's §1. Multi-turn (airo's extension)::

        {system}\\nUSER: u1\\nASSISTANT: r1\\n</s>USER: u2\\nASSISTANT: r2\\n</s>

    Segments: prompt ``BOS + "...\\nASSISTANT: "`` (ending with the reference's space),
    reply ``reply.strip() + "\\n" + EOS``; later prompts start with ``"USER: "``.
    ``skip_prompt_formatting`` (conversation metadata) renders each user turn as
    ``user.strip() + "\\n"`` and ignores the system prompt.
    """

    name = "airoboros"
    description = "Legacy airoboros USER/ASSISTANT prompt (exact reference, PLAINFORMAT, skip_prompt_formatting)"

    def _prompts(self, conversation: Conversation) -> list[tuple[str, str]]:
        skip = bool(conversation.metadata.get("skip_prompt_formatting"))
        prompts = []
        for i, (user, reply) in enumerate(conversation.turns()):
            if skip:
                prompt = user.strip() + "\n"
            else:
                prompt = legacy_user_block(conversation.system, user, first=i == 0) + "\n" + "ASSISTANT: "
            prompts.append((prompt, reply.strip() + "\n"))
        return prompts

    def source_target(self, conversation: Conversation, *, bos_token: str, eos_token: str) -> tuple[str, str]:
        conversation.validate()
        prompts = self._prompts(conversation)
        source = "".join(prompt + reply + eos_token for prompt, reply in prompts[:-1]) + prompts[-1][0]
        return source, prompts[-1][1]

    def _render(self, conversation: Conversation, out: SegmentBuilder, *, bos_token: str, eos_token: str) -> None:
        for turn, (prompt, reply) in enumerate(self._prompts(conversation)):
            out.prompt((bos_token if turn == 0 else "") + prompt, turn)
            out.reply(reply + eos_token, turn)

    # skip_prompt_formatting lives in the conversation's metadata, which a chat template
    # cannot see: the chat_template always applies prompt formatting.
    def chat_template_covers(self, conversation: Conversation) -> bool:
        """Whether ``chat_template`` can render this conversation's prompt at all."""
        return not conversation.metadata.get("skip_prompt_formatting")

    def chat_template_variants(self) -> dict[str, str]:
        # The prompt ends with the reference's "ASSISTANT: ". Tokenized apart from the reply
        # (source_target) that space is a token of its own; tokenized with the reply
        # (--train_on all_replies) it joins the reply's first word, so the prompt the model
        # saw ends at the colon.
        return {**super().chat_template_variants(),
                "no-space-after-assistant": self._chat_template("default", generation_prompt="\nASSISTANT:")}

    def _chat_template(self, variant: str, generation_prompt: str = "\nASSISTANT: ") -> str:
        return "\n".join([
            jinja_split_system(),
            # what follows is trimmed text or a newline: never a space
            "{{- " + leading_bos(variant) + " -}}",
            "{%- for message in loop_messages -%}",
            JINJA_ROLE_CHECK,
            "{%- if message['role'] == 'user' -%}",
            "{%- if loop.first -%}",
            "{%- set s = ((system or " + jinja_literal(LEGACY_DEFAULT_SYSTEM) + ") | trim) + '\\nUSER: ' + "
            "(message['content'] | trim) -%}",
            "{%- else -%}",
            "{%- set s = 'USER: ' + (message['content'] | trim) -%}",
            "{%- endif -%}",
            # re.sub(r"\s+PLAINFORMAT$", "", s) removes the whole whitespace run before it, i.e. rstrip().
            "{%- if s.endswith('PLAINFORMAT') -%}",
            "{%- set t = s[:-11] -%}",
            "{%- if t != t.rstrip() -%}{%- set s = t.rstrip() -%}{%- endif -%}",
            "{%- set s = s + ' PLAINFORMAT' -%}",
            "{%- endif -%}",
            "{{- s | trim -}}",
            "{%- else -%}",
            "{{- '\\nASSISTANT: ' + (message['content'] | trim) + '\\n' + eos_token -}}",
            "{%- endif -%}",
            "{%- endfor -%}",
            "{%- if add_generation_prompt -%}{{- " + jinja_literal(generation_prompt) + " -}}{%- endif -%}",
        ])


def last_reply_text(reply: str) -> str:
    """The llama-2 last reply as the generic path renders it: the reference target, with
    the word-boundary space its separate tokenization implies (none when it is empty or
    already starts with a space)."""
    return (" " if reply and not reply.startswith(" ") else "") + reply


class Llama2Template(BaseTemplate):
    """The airoboros llama-2 chat rendering (spec §2)::

        <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{u1} [/INST] {r1.strip()} </s><s>[INST] {u2.strip()} [/INST] {r2}</s>

    Segments: prompt ``BOS + "[INST] ..." + " [/INST]"``; earlier replies
    ``" " + reply.strip() + " " + EOS``; the last reply ``last_reply_text(reply) + EOS``
    (not stripped). The reference text has no space between ``" [/INST]"`` and its
    target, but it tokenizes the target separately, which gives it a leading
    word-boundary marker unless the target already starts with a space (or is empty):
    ``last_reply_text`` adds that one space, so tokenizing the segments in one pass gives
    the reference's ids (tested with a real SentencePiece llama tokenizer).
    """

    name = "llama-2"
    description = "airoboros llama-2 chat: [INST] <<SYS>> ... [/INST] reply </s><s>[INST] ... (exact reference)"

    def _parts(self, conversation: Conversation) -> tuple[str, list[tuple[str, str]]]:
        system = conversation.system
        return (LLAMA2_DEFAULT_SYSTEM if system is None else system), conversation.turns()

    def source_target(self, conversation: Conversation, *, bos_token: str, eos_token: str) -> tuple[str, str]:
        conversation.validate()
        system, turns = self._parts(conversation)
        history, (message, response) = turns[:-1], turns[-1]
        source = "[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n"
        stripped = False
        for user, reply in history:
            if stripped:
                user = user.strip()
            stripped = True
            source += user + " [/INST] " + reply.strip() + " " + eos_token + bos_token + "[INST] "
        if stripped:
            message = message.strip()
        source += message + " [/INST]"
        return source, response

    def _render(self, conversation: Conversation, out: SegmentBuilder, *, bos_token: str, eos_token: str) -> None:
        system, turns = self._parts(conversation)
        last = len(turns) - 1
        for turn, (user, reply) in enumerate(turns):
            if turn == 0:
                out.prompt(bos_token + "[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n" + user + " [/INST]", turn)
            else:
                out.prompt(bos_token + "[INST] " + user.strip() + " [/INST]", turn)
            if turn < last:
                out.reply(" " + reply.strip() + " " + eos_token, turn)
            else:
                out.reply(last_reply_text(reply) + eos_token, turn)

    def _chat_template(self, variant: str) -> str:
        return "\n".join([
            jinja_split_system(jinja_literal(LLAMA2_DEFAULT_SYSTEM)),
            "{%- for message in loop_messages -%}",
            JINJA_ROLE_CHECK,
            "{%- if message['role'] == 'user' -%}",
            "{%- if loop.first -%}",
            # only the opening BOS varies: the later ones are inside the reference source too
            "{{- " + leading_bos(variant) + " + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content']"
            " + ' [/INST]' -}}",
            "{%- else -%}",
            "{{- bos_token + '[INST] ' + (message['content'] | trim) + ' [/INST]' -}}",
            "{%- endif -%}",
            "{%- elif loop.last -%}",
            "{{- (' ' if (message['content'] and not message['content'].startswith(' ')) else '') + message['content']"
            " + eos_token -}}",
            "{%- else -%}",
            "{{- ' ' + (message['content'] | trim) + ' ' + eos_token -}}",
            "{%- endif -%}",
            "{%- endfor -%}",
        ])


AIROBOROS = AiroborosTemplate()
LLAMA2 = Llama2Template()


@hookimpl
def register_dataset_formats(register):
    register("airoboros", convert_airoboros, default_template="airoboros",
             description="Legacy airoboros (<= 2.2.1): instruction/response/system JSONL records")
    register("airoboros_chat", convert_airoboros_chat, default_template="llama-2",
             description="airoboros >= 3.0: conversations of system/human/gpt messages (llama-2 chat)")


@hookimpl
def register_prompt_templates(register):
    register(AIROBOROS.name, AIROBOROS, description=AIROBOROS.description)
    register(LLAMA2.name, LLAMA2, description=LLAMA2.description)
