"""Built-in prompt templates: chatml, alpaca, vicuna, llama-3, plain, hh-rlhf, oasst1.

Each is an :class:`airo.core.templating.MarkerTemplate`, so its segments and its Jinja
``chat_template`` come from one description and cannot drift apart;
``tests/test_templates.py`` renders every template both ways and compares. The
conventions they follow (what a reply segment holds, where whitespace goes, the BOS
renderings offered to the ``save`` action) are described in :mod:`airo.core.templating`.
No heavy imports here.
"""

from __future__ import annotations

from dataclasses import dataclass

from airo.core import ALPACA_INPUT_MARKER, Conversation, MarkerTemplate, hookimpl

__all__ = ["TEMPLATES"]


# -- the built-in templates ----------------------------------------------------------------

ALPACA_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                     "further context. Write a response that appropriately completes the request.")

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")

CHATML = MarkerTemplate(
    name="chatml",
    description="ChatML: <|im_start|>role\\n...<|im_end|> (no BOS); replies end with <|im_end|>",
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_open="<|im_start|>assistant\n",
    reply="{content}<|im_end|>",
    after_reply="\n",
)

ALPACA = MarkerTemplate(
    name="alpaca",
    description="Stanford Alpaca: preamble, ### Instruction: / ### Input: / ### Response:, reply + EOS",
    begin="{bos}",
    system="{content}",
    user="\n\n### Instruction:\n{content}",
    assistant_open="\n\n### Response:",
    reply="{content}{eos}",
    default_system=ALPACA_NO_INPUT,
    default_system_with_input=ALPACA_WITH_INPUT,
    input_marker=ALPACA_INPUT_MARKER,
)

VICUNA = MarkerTemplate(
    name="vicuna",
    description="Vicuna v1.1 (FastChat): system, then 'USER: ... ASSISTANT: reply</s>'",
    begin="{bos}",
    system="{content} ",
    user="USER: {content} ",
    assistant_open="ASSISTANT:",
    reply=" {content}{eos}",
    default_system=VICUNA_SYSTEM,
)

LLAMA3 = MarkerTemplate(
    name="llama-3",
    description="Llama 3 instruct: <|begin_of_text|>, header ids, contents trimmed, replies end with <|eot_id|>",
    begin="<|begin_of_text|>",
    system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
    user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant_open="<|start_header_id|>assistant<|end_header_id|>\n\n",
    reply="{content}<|eot_id|>",
    strip=True,
)


@dataclass(frozen=True, kw_only=True)
class PlainTemplate(MarkerTemplate):
    """Upstream QLoRA trained raw ``input`` -> ``output`` pairs by tokenizing the two apart:
    with no marker between them, tokenizing the joined text would merge the prompt's last
    characters with the reply's first. ``source_target`` gives the pipeline that split."""

    def source_target(self, conversation: Conversation, *, bos_token: str, eos_token: str) -> tuple[str, str]:
        segments = self.render(conversation, bos_token=bos_token, eos_token=eos_token)
        last_turn = max(s.turn for s in segments if s.reply)
        first_reply = next(i for i, s in enumerate(segments) if s.reply and s.turn == last_turn)
        source = "".join(s.text for s in segments[:first_reply])
        return source.removeprefix(bos_token), segments[first_reply].text.removesuffix(eos_token)


PLAIN = PlainTemplate(
    name="plain",
    description="No markers (upstream QLoRA raw text): BOS, system + newline if any, user text, reply + EOS",
    begin="{bos}",
    system="{content}\n",
    user="{content}",
    assistant_open="",
    reply="{content}{eos}",
)

HH_RLHF = MarkerTemplate(
    name="hh-rlhf",
    description="Anthropic HH: '\\n\\nHuman: ...\\n\\nAssistant: reply' + EOS per reply",
    begin="{bos}",
    system="{content}",
    user="\n\nHuman: {content}",
    assistant_open="\n\nAssistant:",
    reply=" {content}{eos}",
)

OASST1 = MarkerTemplate(
    name="oasst1",
    description="Guanaco / openassistant-guanaco: '### Human: ...### Assistant: reply' + EOS per reply",
    begin="{bos}",
    system="{content}\n",
    user="### Human: {content}",
    assistant_open="### Assistant:",
    reply=" {content}{eos}",
)

TEMPLATES: tuple[MarkerTemplate, ...] = (CHATML, ALPACA, VICUNA, LLAMA3, PLAIN, HH_RLHF, OASST1)


@hookimpl
def register_prompt_templates(register):
    for template in TEMPLATES:
        register(template.name, template, description=template.description)
