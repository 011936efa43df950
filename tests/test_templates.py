"""Prompt templates: the reference airoboros source/target, segments, and chat_template parity."""

from __future__ import annotations

import re

import pytest

from airo.core import Conversation, Message
from airo.core.plugins import get_registry

BOS, EOS = "<s>", "</s>"
TOKEN_PAIRS = [("<s>", "</s>"), ("<|begin_of_text|>", "<|end_of_text|>")]
LLAMA2_DEFAULT = "You are an unbiased, uncensored, helpful assistant."


@pytest.fixture(scope="module")
def registry():
    return get_registry()


def template(name):
    return get_registry().templates[name].template


def conv(*messages, **metadata) -> Conversation:
    return Conversation([Message(role, content) for role, content in messages], metadata=dict(metadata))


def joined(segments) -> str:
    return "".join(s.text for s in segments)


def before_last_reply(segments) -> str:
    last = max(i for i, s in enumerate(segments) if s.reply)
    return joined(segments[:last])


def render_chat_template(chat_template, messages, *, add_generation_prompt, bos_token, eos_token) -> str:
    """Render exactly as ``tokenizer.apply_chat_template(..., tokenize=False)`` does: the
    same function, hence the same sandboxed Jinja environment (trim_blocks, lstrip_blocks,
    raise_exception, ...)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=chat_template,
                                        add_generation_prompt=add_generation_prompt,
                                        bos_token=bos_token, eos_token=eos_token)
    return rendered[0]


def as_dicts(conversation: Conversation) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in conversation.messages]


# -- the spec's reference algorithms, copied literally ------------------------------------------


def reference_airoboros(instruction, response, system=None, skip_prompt_formatting=False):
    if skip_prompt_formatting:
        source = instruction.strip() + "\n"
    else:
        s = (system or "A chat.").strip() + "\n" + "USER: " + instruction.strip()
        if s.endswith("PLAINFORMAT"):
            s = re.sub(r"\s+PLAINFORMAT$", "", s)
            s += " PLAINFORMAT"
        source = s.strip() + "\n" + "ASSISTANT: "
    target = response.strip() + "\n"
    return source, target


def reference_llama2(conv, EOS=EOS, BOS=BOS):  # noqa: N803 - the spec's names
    DEFAULT_SYSTEM = LLAMA2_DEFAULT  # noqa: N806
    if conv[0]["from"] == "system":
        system = conv[0]["value"]
        offset = 1
    else:
        system = DEFAULT_SYSTEM
        offset = 0
    history = [(conv[i]["value"], conv[i + 1]["value"]) for i in range(offset, len(conv) - 2, 2)]
    message = conv[-2]["value"]
    response = conv[-1]["value"]
    source = "[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n"
    stripped = False
    for user, reply in history:
        if stripped:
            user = user.strip()
        stripped = True
        source += user + " [/INST] " + reply.strip() + " " + EOS + BOS + "[INST] "
    if stripped:
        message = message.strip()
    source += message + " [/INST]"
    target = response
    return source, target


# -- corpora ----------------------------------------------------------------------------------

UNICODE = "héllo wörld café naïve 日本語 😀 ünïcödé"
CODE = "```python\ndef f(x):\n    return {'a': x, \"b\": '\\n'}\n```\n{{ bos_token }} {% if x %}not jinja{% endif %}"

AIROBOROS_RECORDS = [
    {"instruction": "What is 2+2?", "response": "4"},
    {"instruction": "  What is 2+2?  \n", "response": "\n 4 \n", "system": "  You are a pirate.  "},
    {"instruction": "What is 2+2?", "response": "4", "system": "   "},
    {"instruction": "What is 2+2?", "response": "4", "system": "\t\n"},
    {"instruction": "What is 2+2?", "response": "4", "system": ""},
    {"instruction": "What is 2+2?", "response": "4", "system": None},
    {"instruction": "Write a sort function.\n PLAINFORMAT", "response": "def f(): pass"},
    {"instruction": "Write a sort functionPLAINFORMAT", "response": "x"},
    {"instruction": "Write it. PLAINFORMAT  \n", "response": "x", "system": "sys"},
    {"instruction": "PLAINFORMAT", "response": "x"},
    {"instruction": "x\u00a0\u2003PLAINFORMAT", "response": "x"},
    {"instruction": "   ", "response": "  "},
    {"instruction": UNICODE, "response": UNICODE, "system": UNICODE},
    {"instruction": CODE, "response": CODE},
    {"instruction": "  Continue: once upon \n", "response": " a time ", "skip_prompt_formatting": True,
     "system": "ignored"},
]


def _chat(*pairs):
    return {"conversations": [{"from": f, "value": v} for f, v in pairs]}


AIROBOROS_CHAT_RECORDS = [
    _chat(("human", " What is 2+2? "), ("gpt", " 4 ")),
    _chat(("system", " Be nice. "), ("human", " Hi "), ("gpt", " Hello ")),
    _chat(("system", ""), ("human", "q"), ("gpt", "a")),
    _chat(("system", "   "), ("human", "q"), ("gpt", "a")),
    _chat(("human", " a "), ("gpt", " b "), ("human", " c "), ("gpt", " d "), ("human", " e "), ("gpt", " f ")),
    _chat(("system", "s"), ("human", UNICODE), ("gpt", UNICODE), ("human", CODE), ("gpt", CODE)),
    _chat(("human", "x"), ("gpt", "")),
]

# (role, content) conversations for every template.
CORPUS = [
    [("user", "What is 2+2?"), ("assistant", "4")],
    [("system", "You are terse."), ("user", "What is 2+2?"), ("assistant", "4")],
    [("system", "   "), ("user", " hi "), ("assistant", " yo ")],
    [("system", ""), ("user", "q"), ("assistant", "a")],
    [("user", " u1 "), ("assistant", " r1 "), ("user", "\nu2\n"), ("assistant", "\nr2\n"), ("user", "u3"),
     ("assistant", "r3")],
    [("system", "s"), ("user", "u1"), ("assistant", "r1"), ("user", "u2"), ("assistant", "r2")],
    [("user", UNICODE), ("assistant", UNICODE)],
    [("system", UNICODE), ("user", CODE), ("assistant", CODE)],
    [("user", "it's a \\n 'quote' \"dq\""), ("assistant", "ok\\")],
    [("user", "Write a sort function.\n PLAINFORMAT"), ("assistant", "def f(): pass")],
    [("user", "Write a sort functionPLAINFORMAT"), ("assistant", "x"), ("user", "again  PLAINFORMAT"),
     ("assistant", "y")],
    [("user", "x"), ("assistant", "")],
    [("user", "Add.\n\n### Input:\n2 and 2"), ("assistant", "4")],
]

TEMPLATE_NAMES = ["airoboros", "llama-2", "chatml", "alpaca", "vicuna", "llama-3", "plain", "hh-rlhf", "oasst1"]


def test_all_templates_registered_with_descriptions(registry):
    for name in TEMPLATE_NAMES:
        entry = registry.templates[name]
        assert entry.description and "\n" not in entry.description
        assert isinstance(entry.template.chat_template, str)
        assert callable(entry.template.render)
    assert hasattr(registry.templates["airoboros"].template, "source_target")
    assert hasattr(registry.templates["llama-2"].template, "source_target")


# -- airoboros legacy: source/target goldens (hand-worked from spec §1) ---------------------------


def _airoboros_st(record):
    conversation = get_registry().formats["airoboros"].converter(record)
    return template("airoboros").source_target(conversation, bos_token=BOS, eos_token=EOS)


@pytest.mark.parametrize("record, expected", [
    ({"instruction": "What is 2+2?", "response": "4"}, ("A chat.\nUSER: What is 2+2?\nASSISTANT: ", "4\n")),
    ({"instruction": " Hi \n", "response": " Arr \n", "system": " You are a pirate. "},
     ("You are a pirate.\nUSER: Hi\nASSISTANT: ", "Arr\n")),
    # a whitespace-only system is truthy, strips to "", and s.strip() then drops the leading "\n"
    ({"instruction": "What is 2+2?", "response": "4", "system": "   "}, ("USER: What is 2+2?\nASSISTANT: ", "4\n")),
    ({"instruction": "What is 2+2?", "response": "4", "system": ""}, ("A chat.\nUSER: What is 2+2?\nASSISTANT: ", "4\n")),
    ({"instruction": "Write a function.\n PLAINFORMAT", "response": "x"},
     ("A chat.\nUSER: Write a function. PLAINFORMAT\nASSISTANT: ", "x\n")),
    ({"instruction": "Write a functionPLAINFORMAT", "response": "x"},
     ("A chat.\nUSER: Write a functionPLAINFORMAT PLAINFORMAT\nASSISTANT: ", "x\n")),
    ({"instruction": "Write it. PLAINFORMAT  \n", "response": "x"},
     ("A chat.\nUSER: Write it. PLAINFORMAT\nASSISTANT: ", "x\n")),
    ({"instruction": "PLAINFORMAT", "response": "x"}, ("A chat.\nUSER: PLAINFORMAT\nASSISTANT: ", "x\n")),
    ({"instruction": "  ", "response": "x"}, ("A chat.\nUSER:\nASSISTANT: ", "x\n")),
    ({"instruction": "  Continue: once upon \n", "response": " a time ", "skip_prompt_formatting": True,
      "system": "ignored"}, ("Continue: once upon\n", "a time\n")),
])
def test_airoboros_source_target_golden(record, expected):
    assert _airoboros_st(record) == expected


@pytest.mark.parametrize("record", AIROBOROS_RECORDS)
def test_airoboros_source_target_equals_spec_code(record):
    expected = reference_airoboros(record["instruction"], record["response"], record.get("system"),
                                   bool(record.get("skip_prompt_formatting")))
    assert _airoboros_st(record) == expected


def test_airoboros_multi_turn_extension():
    c = conv(("user", " u1 "), ("assistant", " r1 "), ("user", "u2\n PLAINFORMAT"), ("assistant", " r2 "))
    source, target = template("airoboros").source_target(c, bos_token=BOS, eos_token=EOS)
    assert source == "A chat.\nUSER: u1\nASSISTANT: r1\n</s>USER: u2 PLAINFORMAT\nASSISTANT: "
    assert target == "r2\n"
    segments = template("airoboros").render(c, bos_token=BOS, eos_token=EOS)
    assert [(s.text, s.reply, s.turn) for s in segments] == [
        ("<s>A chat.\nUSER: u1\nASSISTANT: ", False, 0), ("r1\n</s>", True, 0),
        ("USER: u2 PLAINFORMAT\nASSISTANT: ", False, 1), ("r2\n</s>", True, 1),
    ]


# -- llama-2: source/target goldens (hand-worked from spec §2) -------------------------------------


def _llama2_st(record, bos=BOS, eos=EOS):
    conversation = get_registry().formats["airoboros_chat"].converter(record)
    return template("llama-2").source_target(conversation, bos_token=bos, eos_token=eos)


def test_llama2_single_turn_default_system_nothing_stripped():
    assert _llama2_st(_chat(("human", " What is 2+2? "), ("gpt", " 4 "))) == (
        "[INST] <<SYS>>\nYou are an unbiased, uncensored, helpful assistant.\n<</SYS>>\n\n What is 2+2?  [/INST]",
        " 4 ",
    )


def test_llama2_system_not_stripped():
    assert _llama2_st(_chat(("system", " Be nice.\n"), ("human", "Hi"), ("gpt", "Hello"))) == (
        "[INST] <<SYS>>\n Be nice.\n\n<</SYS>>\n\nHi [/INST]", "Hello")
    assert _llama2_st(_chat(("system", ""), ("human", "Hi"), ("gpt", "Hello")))[0] == (
        "[INST] <<SYS>>\n\n<</SYS>>\n\nHi [/INST]")


def test_llama2_three_turns():
    record = _chat(("system", " Be nice. "), ("human", " Hi "), ("gpt", " Hello "), ("human", " How are you? "),
                   ("gpt", " Fine. "), ("human", " Bye "), ("gpt", " Bye! "))
    assert _llama2_st(record) == (
        "[INST] <<SYS>>\n Be nice. \n<</SYS>>\n\n Hi  [/INST] Hello </s><s>[INST] How are you? [/INST] Fine. "
        "</s><s>[INST] Bye [/INST]",
        " Bye! ",
    )
    segments = template("llama-2").render(get_registry().formats["airoboros_chat"].converter(record),
                                          bos_token=BOS, eos_token=EOS)
    assert [(s.text, s.reply, s.turn) for s in segments] == [
        ("<s>[INST] <<SYS>>\n Be nice. \n<</SYS>>\n\n Hi  [/INST]", False, 0),
        (" Hello </s>", True, 0),
        ("<s>[INST] How are you? [/INST]", False, 1),
        (" Fine. </s>", True, 1),
        ("<s>[INST] Bye [/INST]", False, 2),
        (" Bye! </s>", True, 2),  # the target starts with a space: no space added
    ]


@pytest.mark.parametrize("bos, eos", TOKEN_PAIRS)
@pytest.mark.parametrize("record", AIROBOROS_CHAT_RECORDS)
def test_llama2_source_target_equals_spec_code(record, bos, eos):
    assert _llama2_st(record, bos, eos) == reference_llama2(record["conversations"], EOS=eos, BOS=bos)


@pytest.mark.parametrize("name", ["airoboros", "llama-2"])
def test_source_target_rejects_invalid_conversations(name):
    with pytest.raises(ValueError, match="ends on a user turn"):
        template(name).source_target(conv(("user", "q")), bos_token=BOS, eos_token=EOS)


# -- render() against source_target ---------------------------------------------------------------


@pytest.mark.parametrize("bos, eos", TOKEN_PAIRS)
def test_airoboros_render_is_bos_source_target_eos(bos, eos):
    registry = get_registry()
    conversations = [registry.formats["airoboros"].converter(r) for r in AIROBOROS_RECORDS]
    conversations += [conv(*c) for c in CORPUS]
    for c in conversations:
        source, target = template("airoboros").source_target(c, bos_token=bos, eos_token=eos)
        segments = template("airoboros").render(c, bos_token=bos, eos_token=eos)
        assert joined(segments) == bos + source + target + eos
        assert before_last_reply(segments) == bos + source
        assert segments[-1].reply and segments[-1].text == target + eos


@pytest.mark.parametrize("bos, eos", TOKEN_PAIRS)
def test_llama2_render_is_bos_source_space_target_eos(bos, eos):
    registry = get_registry()
    conversations = [registry.formats["airoboros_chat"].converter(r) for r in AIROBOROS_CHAT_RECORDS]
    conversations += [conv(*c) for c in CORPUS]
    for c in conversations:
        source, target = template("llama-2").source_target(c, bos_token=bos, eos_token=eos)
        segments = template("llama-2").render(c, bos_token=bos, eos_token=eos)
        # The one space the reference text lacks stands for the word-boundary marker the
        # reference's separately tokenized target gets (see the token test below).
        space = " " if target and not target.startswith(" ") else ""
        assert joined(segments) == bos + source + space + target + eos
        assert before_last_reply(segments) == bos + source
        assert segments[-1].reply and segments[-1].text == space + target + eos


def test_llama2_generic_tokens_equal_reference_tokens(tiny_tokenizer):
    """On a legacy llama SentencePiece tokenizer, tokenizing the rendered segments in one
    pass gives exactly the reference ids: [BOS] + tok(source) + tok(target) + [EOS]."""
    tok = tiny_tokenizer
    registry = get_registry()
    for record in AIROBOROS_CHAT_RECORDS + [
            _chat(("human", "what is the sky"), ("gpt", "the sky is blue because light scatters")),
            _chat(("human", "q"), ("gpt", "\n\tindented")), _chat(("human", "q"), ("gpt", "  two spaces"))]:
        c = registry.formats["airoboros_chat"].converter(record)
        source, target = template("llama-2").source_target(c, bos_token=tok.bos_token, eos_token=tok.eos_token)
        reference = (tok(source, add_special_tokens=True)["input_ids"] + tok(target, add_special_tokens=False)["input_ids"]
                     + [tok.eos_token_id])
        text = joined(template("llama-2").render(c, bos_token=tok.bos_token, eos_token=tok.eos_token))
        assert tok(text, add_special_tokens=False)["input_ids"] == reference, record


# -- segments -------------------------------------------------------------------------------------


def _expected_replies(name, c: Conversation, eos):
    replies = [r for _, r in c.turns()]
    last = len(replies) - 1
    return {
        "airoboros": [r.strip() + "\n" + eos for r in replies],
        "llama-2": [(" " + r.strip() + " " if i < last else (" " if r and r[0] != " " else "") + r) + eos
                    for i, r in enumerate(replies)],
        "chatml": [r + "<|im_end|>" for r in replies],
        "alpaca": [r + eos for r in replies],
        "vicuna": [" " + r + eos for r in replies],
        "llama-3": [r.strip() + "<|eot_id|>" for r in replies],
        "plain": [r + eos for r in replies],
        "hh-rlhf": [" " + r + eos for r in replies],
        "oasst1": [" " + r + eos for r in replies],
    }[name]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@pytest.mark.parametrize("messages", CORPUS)
def test_segments(name, messages):
    c = conv(*messages)
    segments = template(name).render(c, bos_token=BOS, eos_token=EOS)
    replies = [s for s in segments if s.reply]
    assert [s.text for s in replies] == _expected_replies(name, c, EOS)
    assert [s.turn for s in replies] == list(range(len(c.turns())))
    # prompt and reply segments alternate, each prompt before the reply of its own turn
    prompts = [s for s in segments if not s.reply]
    assert all(s.text for s in prompts)
    turns = [s.turn for s in segments]
    assert turns == sorted(turns)
    for i, s in enumerate(segments):
        if s.reply:
            assert i > 0 and not segments[i - 1].reply and segments[i - 1].turn == s.turn
    # Never end a prompt with a space the reply's first word would be glued to. Exceptions:
    # the legacy airoboros template, whose reference prompt ends in "ASSISTANT: ", and plain,
    # whose prompt ends with the user's text as it is.
    if name not in ("airoboros", "plain"):
        for i, s in enumerate(segments[:-1]):
            if segments[i + 1].reply:
                assert not s.text.endswith(" "), (name, s.text)
    starts = {"airoboros": BOS, "llama-2": BOS, "alpaca": BOS, "vicuna": BOS, "plain": BOS, "hh-rlhf": BOS,
              "oasst1": BOS, "llama-3": "<|begin_of_text|>", "chatml": "<|im_start|>"}
    assert joined(segments).startswith(starts[name])
    if name in ("chatml", "llama-3"):
        assert BOS not in joined(segments)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_render_rejects_invalid_conversations(name):
    for bad in (conv(("user", "q")), conv(("assistant", "a")), conv(("user", "q"), ("system", "s"))):
        with pytest.raises(ValueError):
            template(name).render(bad, bos_token=BOS, eos_token=EOS)


def test_template_goldens():
    c = conv(("system", "S"), ("user", "U1"), ("assistant", "R1"), ("user", "U2"), ("assistant", "R2"))
    expected = {
        "chatml": "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nR1<|im_end|>\n"
                  "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\nR2<|im_end|>\n",
        "alpaca": "<s>S\n\n### Instruction:\nU1\n\n### Response:R1</s>\n\n### Instruction:\nU2\n\n### Response:R2</s>",
        "vicuna": "<s>S USER: U1 ASSISTANT: R1</s>USER: U2 ASSISTANT: R2</s>",
        "llama-3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
                   "\n\nR1<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\nR2<|eot_id|>",
        "plain": "<s>S\nU1R1</s>U2R2</s>",
        "hh-rlhf": "<s>S\n\nHuman: U1\n\nAssistant: R1</s>\n\nHuman: U2\n\nAssistant: R2</s>",
        "oasst1": "<s>S\n### Human: U1### Assistant: R1</s>### Human: U2### Assistant: R2</s>",
        "airoboros": "<s>S\nUSER: U1\nASSISTANT: R1\n</s>USER: U2\nASSISTANT: R2\n</s>",
        "llama-2": "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] R1 </s><s>[INST] U2 [/INST] R2</s>",
    }
    for name, text in expected.items():
        assert joined(template(name).render(c, bos_token=BOS, eos_token=EOS)) == text, name
    vicuna = joined(template("vicuna").render(conv(("user", "Hi"), ("assistant", "Hello")), bos_token=BOS,
                                              eos_token=EOS))
    assert vicuna == ("<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                      "helpful, detailed, and polite answers to the user's questions. USER: Hi ASSISTANT: Hello</s>")
    chatml_chain = template("chatml").render(conv(("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "a2")),
                                             bos_token=BOS, eos_token=EOS)
    assert [s.text for s in chatml_chain] == [
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", "a<|im_end|>",
        "\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n", "a2<|im_end|>", "\n"]


# -- chat_template parity ---------------------------------------------------------------------------
# skip_prompt_formatting (airoboros only) is conversation metadata, which a chat template
# cannot see: it is left out of the parity corpus. PLAINFORMAT is reproduced in Jinja and
# stays in.


@pytest.mark.parametrize("bos, eos", TOKEN_PAIRS)
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_chat_template_parity(name, bos, eos):
    t = template(name)
    for messages in CORPUS:
        c = conv(*messages)
        segments = t.render(c, bos_token=bos, eos_token=eos)
        msgs = as_dicts(c)
        prompt = render_chat_template(t.chat_template, msgs[:-1], add_generation_prompt=True, bos_token=bos,
                                      eos_token=eos)
        assert prompt == before_last_reply(segments), (name, messages)
        full = render_chat_template(t.chat_template, msgs, add_generation_prompt=False, bos_token=bos, eos_token=eos)
        assert full == joined(segments), (name, messages)
        if hasattr(t, "source_target"):
            source, _ = t.source_target(c, bos_token=bos, eos_token=eos)
            assert prompt == bos + source


@pytest.mark.parametrize("bos, eos", TOKEN_PAIRS)
def test_airoboros_chat_template_parity_with_spec_records(bos, eos):
    registry = get_registry()
    for record in AIROBOROS_RECORDS:
        if record.get("skip_prompt_formatting"):
            continue  # metadata: not expressible in a chat template
        c = registry.formats["airoboros"].converter(record)
        source, _ = template("airoboros").source_target(c, bos_token=bos, eos_token=eos)
        prompt = render_chat_template(template("airoboros").chat_template, as_dicts(c)[:-1],
                                      add_generation_prompt=True, bos_token=bos, eos_token=eos)
        assert prompt == bos + source, record
    for record in AIROBOROS_CHAT_RECORDS:
        c = registry.formats["airoboros_chat"].converter(record)
        source, _ = template("llama-2").source_target(c, bos_token=bos, eos_token=eos)
        prompt = render_chat_template(template("llama-2").chat_template, as_dicts(c)[:-1],
                                      add_generation_prompt=True, bos_token=bos, eos_token=eos)
        assert prompt == bos + source, record


VARIANTS = {"chatml": ["default"], "llama-3": ["default"],
            "airoboros": ["default", "space-after-bos", "no-bos", "no-space-after-assistant"]}


@pytest.mark.parametrize("bos, eos", TOKEN_PAIRS)
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_chat_template_variants_differ_only_where_tokenizers_differ(name, bos, eos):
    """The renderings the save action chooses from (airo.core.chat_parity): the template's
    own first; then the opening BOS followed by a space (none when the text already starts
    with one), or left out; airoboros also without the space after the last "ASSISTANT:"."""
    t = template(name)
    variants = t.chat_template_variants()
    assert list(variants) == VARIANTS.get(name, ["default", "space-after-bos", "no-bos"])
    assert variants["default"] == t.chat_template
    for messages in CORPUS:
        msgs = as_dicts(conv(*messages))[:-1]
        prompts = {variant: render_chat_template(text, msgs, add_generation_prompt=True, bos_token=bos,
                                                 eos_token=eos) for variant, text in variants.items()}
        default = prompts["default"]
        rest = default.removeprefix(bos)
        if "no-bos" in prompts:
            assert default.startswith(bos) and prompts["no-bos"] == rest
            assert prompts["space-after-bos"] == bos + ("" if rest.startswith(" ") else " ") + rest, (name, messages)
        if "no-space-after-assistant" in prompts:
            assert default.endswith("\nASSISTANT: ") and prompts["no-space-after-assistant"] == default[:-1]


def test_leading_bos_names_the_renderings():
    from airo.core.templating import LEADING_BOS, leading_bos

    assert [leading_bos(v) for v in LEADING_BOS] == ["bos_token", "bos_token + ' '", "''"]
    with pytest.raises(ValueError, match="unknown leading BOS rendering 'space'"):
        leading_bos("space")


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_chat_template_rejects_bad_role_order(name):
    from jinja2.exceptions import TemplateError

    for bad in ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                [{"role": "assistant", "content": "a"}],
                [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}]):
        with pytest.raises(TemplateError, match="roles must be"):
            render_chat_template(template(name).chat_template, bad, add_generation_prompt=True, bos_token=BOS,
                                 eos_token=EOS)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_apply_chat_template_token_parity(name, tiny_tokenizer):
    """Through the tokenizer itself: the generation prompt's ids equal the ids of the masked
    prefix (and, for source_target templates, of the reference source with its BOS)."""
    tok = tiny_tokenizer
    t = template(name)
    for messages in (CORPUS[1], CORPUS[4], CORPUS[7]):
        c = conv(*messages)
        prompt_ids = tok.apply_chat_template(as_dicts(c)[:-1], chat_template=t.chat_template,
                                             add_generation_prompt=True, tokenize=True)
        if not isinstance(prompt_ids, list):
            prompt_ids = prompt_ids["input_ids"]
        segments = t.render(c, bos_token=tok.bos_token, eos_token=tok.eos_token)
        assert prompt_ids == tok(before_last_reply(segments), add_special_tokens=False)["input_ids"]
        if hasattr(t, "source_target"):
            source, _ = t.source_target(c, bos_token=tok.bos_token, eos_token=tok.eos_token)
            assert prompt_ids == tok(source, add_special_tokens=True)["input_ids"]
        if BOS in before_last_reply(segments):
            assert prompt_ids[0] == tok.bos_token_id and prompt_ids[1] != tok.bos_token_id  # no double BOS


def test_marker_template_checks_content_placeholder():
    from airo.core.templating import MarkerTemplate

    bad = MarkerTemplate(name="bad", description="x", user="no placeholder", assistant_open="", reply="{content}")
    with pytest.raises(ValueError, match="exactly once"):
        bad.render(conv(("user", "q"), ("assistant", "a")), bos_token=BOS, eos_token=EOS)


# -- airo.core.templating: the toolkit the templates above (and a plugin's) are built with --------


def test_reference_templates_are_the_ones_with_source_target(registry):
    """ReferenceTemplate (the declared optional source_target) agrees with the pipeline's
    duck-typing check on every registered template."""
    from airo.core import PromptTemplate, ReferenceTemplate

    reference = set()
    for name, entry in registry.templates.items():
        assert isinstance(entry.template, PromptTemplate), name
        has_method = callable(getattr(entry.template, "source_target", None))
        assert isinstance(entry.template, ReferenceTemplate) == has_method, name
        if has_method:
            reference.add(name)
    assert {"airoboros", "llama-2", "plain"} <= reference and "chatml" not in reference


def colon_template():
    """A template of its own rules, built on BaseTemplate: ``BOS user: reply`` per turn."""
    from airo.core.templating import BaseTemplate, leading_bos

    class ColonTemplate(BaseTemplate):
        name = "colon"

        def _render(self, conversation, out, *, bos_token, eos_token):
            for turn, (user, reply) in enumerate(conversation.turns()):
                out.prompt(bos_token if turn == 0 else "", turn)
                out.prompt("", turn)  # dropped
                out.prompt(user + ":", turn)  # merged with the BOS piece
                out.reply(reply, turn)  # kept even when empty

        def _chat_template(self, variant):
            return "{{- " + leading_bos(variant) + " -}}"

    return ColonTemplate()


def test_base_template_builds_segments_and_chat_template_variants():
    from airo.core.templating import LEADING_BOS

    t = colon_template()
    segments = t.render(conv(("user", "a"), ("assistant", ""), ("user", "b"), ("assistant", "c")),
                        bos_token=BOS, eos_token=EOS)
    assert [(s.text, s.reply, s.turn) for s in segments] == [
        ("<s>a:", False, 0), ("", True, 0), ("b:", False, 1), ("c", True, 1)]
    assert t.chat_template == "{{- bos_token -}}"
    assert list(t.chat_template_variants()) == list(LEADING_BOS)
    assert repr(t) == "<ColonTemplate 'colon'>"
    with pytest.raises(ValueError, match="ends on a user turn"):
        t.render(conv(("user", "a")), bos_token=BOS, eos_token=EOS)


def test_base_template_without_jinja_builder():
    from airo.core.templating import BaseTemplate

    class Fixed(BaseTemplate):
        chat_template = "{{ messages }}"

    assert Fixed().chat_template_variants() == {"default": "{{ messages }}"}
    with pytest.raises(NotImplementedError, match="BaseTemplate must define _chat_template"):
        BaseTemplate().chat_template  # noqa: B018
    with pytest.raises(NotImplementedError, match="Fixed must define _render"):
        Fixed().render(conv(("user", "a"), ("assistant", "b")), bos_token=BOS, eos_token=EOS)


@pytest.mark.parametrize("messages, expected", [
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "u"}], "S|1"),
    ([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], "default of 2|2"),
    ([], "default of 0|0"),
])
def test_jinja_split_system(messages, expected):
    from airo.core.templating import jinja_split_system

    jinja = jinja_split_system("'default of ' ~ (loop_messages | length)") + "{{ system }}|{{ loop_messages | length }}"
    assert render_chat_template(jinja, messages, add_generation_prompt=False, bos_token=BOS,
                                eos_token=EOS) == expected


def test_jinja_literal_round_trips():
    import jinja2

    from airo.core.templating import jinja_literal

    text = "it's a \\n \"quote\"\nnew line\r{{ not jinja }}"
    assert jinja2.Environment().from_string("{{ " + jinja_literal(text) + " }}").render() == text


def test_contributing_marker_template_example_is_the_example_plugins():
    """The MarkerTemplate shown in CONTRIBUTING.md renders as the example plugin's template,
    and its chat_template gives the prompt render() trains on."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "CONTRIBUTING.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "= MarkerTemplate(" in b]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(blocks[0], namespace)
    documented = namespace["QA"]
    c = conv(("system", "Be brief."), ("user", "hi"), ("assistant", "hello"), ("user", "2+2?"), ("assistant", "4"))
    segments = documented.render(c, bos_token=BOS, eos_token=EOS)
    assert segments == template("example-qa").render(c, bos_token=BOS, eos_token=EOS)
    assert render_chat_template(documented.chat_template, as_dicts(c)[:-1], add_generation_prompt=True,
                                bos_token=BOS, eos_token=EOS) == before_last_reply(segments)
