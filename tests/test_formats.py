"""Dataset formats: golden conversions for every built-in format, and bad records."""

from __future__ import annotations

import pytest

from airo.core import Conversation, Message
from airo.core.plugins import get_registry

BOS, EOS = "<s>", "</s>"


@pytest.fixture(scope="module")
def registry():
    return get_registry()


def convert(registry, fmt, record):
    """Convert and validate, as the pipeline does."""
    conversation = registry.formats[fmt].converter(record)
    if conversation is not None:
        conversation.validate()
    return conversation


def msgs(conversation: Conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conversation.messages]


def text(registry, template: str, conversation: Conversation) -> str:
    segments = registry.templates[template].template.render(conversation, bos_token=BOS, eos_token=EOS)
    return "".join(s.text for s in segments)


def test_every_format_is_registered_with_a_default_template_and_description(registry):
    expected = {
        "airoboros": "airoboros", "airoboros_chat": "llama-2", "alpaca": "alpaca", "input-output": "plain",
        "self-instruct": "plain", "chip2": "plain", "hh-rlhf": "hh-rlhf", "oasst1": "oasst1",
        "sharegpt": "chatml", "messages": "chatml",
    }
    for name, template in expected.items():
        entry = registry.formats[name]
        assert entry.default_template == template, name
        assert entry.default_template in registry.templates
        assert entry.description and "\n" not in entry.description


def test_formats_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, airo.core.records, airo.core.templating, airo.plugins.formats, airo.plugins.templates, "
            "airo.plugins.airoboros; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- airoboros (legacy) ------------------------------------------------------------------------


def test_airoboros_minimal(registry):
    conv = convert(registry, "airoboros", {"instruction": "What is 2+2?", "response": "4"})
    assert msgs(conv) == [("user", "What is 2+2?"), ("assistant", "4")]
    assert conv.metadata == {}


def test_airoboros_keeps_raw_system_and_metadata(registry):
    conv = convert(registry, "airoboros", {
        "instruction": " hi ", "response": " there ", "system": "  You are terse.  ",
        "category": "general", "source": "gpt4", "id": "abc", "skip_prompt_formatting": 1,
    })
    assert msgs(conv) == [("system", "  You are terse.  "), ("user", " hi "), ("assistant", " there ")]
    assert conv.metadata == {"category": "general", "source": "gpt4", "id": "abc", "skip_prompt_formatting": True}


def test_airoboros_whitespace_only_system_is_kept_raw(registry):
    conv = convert(registry, "airoboros", {"instruction": "q", "response": "a", "system": "   "})
    assert conv.system == "   "


@pytest.mark.parametrize("system", [None, ""])
def test_airoboros_empty_system_means_none(registry, system):
    record = {"instruction": "q", "response": "a", "skip_prompt_formatting": False, "system": system}
    conv = convert(registry, "airoboros", record)
    assert conv.system is None
    assert "skip_prompt_formatting" not in conv.metadata


@pytest.mark.parametrize("record, message", [
    ({"response": "4"}, "missing required field 'instruction'"),
    ({"instruction": None, "response": "4"}, "missing required field 'instruction'"),
    ({"instruction": "q"}, "missing required field 'response'"),
    ({"instruction": "q", "response": 4}, "field 'response' must be a string, got int"),
    ({"instruction": ["q"], "response": "4"}, "field 'instruction' must be a string, got list"),
    ({"instruction": "q", "response": "4", "system": 3}, "field 'system' must be a string, got int"),
    (["q", "4"], "record must be a JSON object, got list"),
])
def test_airoboros_bad_records(registry, record, message):
    with pytest.raises(ValueError) as err:
        convert(registry, "airoboros", record)
    assert message in str(err.value)


# -- airoboros_chat --------------------------------------------------------------------------------


def test_airoboros_chat_with_system(registry):
    conv = convert(registry, "airoboros_chat", {
        "id": "x1", "category": "coding", "source": "s", "extra": "ignored",
        "conversations": [
            {"from": "system", "value": " Be brief. "},
            {"from": "human", "value": " hi "},
            {"from": "gpt", "value": " hello "},
            {"from": "human", "value": "more"},
            {"from": "gpt", "value": "sure"},
        ],
    })
    assert msgs(conv) == [("system", " Be brief. "), ("user", " hi "), ("assistant", " hello "),
                          ("user", "more"), ("assistant", "sure")]
    assert conv.metadata == {"id": "x1", "category": "coding", "source": "s"}


def test_airoboros_chat_without_system_and_empty_system(registry):
    conv = convert(registry, "airoboros_chat", {"conversations": [
        {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
    assert msgs(conv) == [("user", "q"), ("assistant", "a")]
    conv = convert(registry, "airoboros_chat", {"conversations": [
        {"from": "system", "value": ""}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
    assert conv.system == ""  # the reference uses an explicit empty system as is


def _chat(*turns):
    return {"conversations": [{"from": f, "value": v} for f, v in turns]}


@pytest.mark.parametrize("record, message", [
    ({}, "missing required field 'conversations'"),
    ({"conversations": "hi"}, "field 'conversations' must be a list of messages, got str"),
    ({"conversations": []}, "field 'conversations' is an empty conversation"),
    (_chat(("human", "q"), ("bot", "a")), "conversations[1]: unknown 'from' value 'bot'"),
    (_chat(("human", "q"), ("gpt", 5)), "conversations[1]: 'value' must be a string, got int"),
    (_chat(("human", "q"), ("gpt", None)), "conversations[1]: 'value' must be a string, got null"),
    (_chat(("human", "q"), ("system", "s"), ("gpt", "a")), "conversations[1]: a system message may only come first"),
    (_chat(("human", "q"), ("human", "q2"), ("gpt", "a")), "roles out of order: expected assistant, got user"),
    (_chat(("gpt", "a"),), "roles out of order: expected user, got assistant"),
    (_chat(("human", "q"), ("gpt", "a"), ("human", "q2")), "conversation ends on a user turn"),
    (_chat(("system", "s"),), "conversation has only a system message"),
    ({"conversations": [{"from": "human"}]}, "conversations[0] is missing 'value'"),
    ({"conversations": ["hi"]}, "conversations[0] must be an object"),
])
def test_airoboros_chat_bad_records(registry, record, message):
    with pytest.raises(ValueError) as err:
        convert(registry, "airoboros_chat", record)
    assert message in str(err.value)


# -- alpaca ---------------------------------------------------------------------------------------

STANFORD_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
STANFORD_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)


def test_alpaca_without_input_renders_stanford_prompt(registry):
    for record in ({"instruction": "Name a color.", "output": "Blue."},
                   {"instruction": "Name a color.", "input": "", "output": "Blue."},
                   {"instruction": "Name a color.", "input": None, "output": "Blue."}):
        conv = convert(registry, "alpaca", record)
        assert msgs(conv) == [("user", "Name a color."), ("assistant", "Blue.")]
        assert text(registry, "alpaca", conv) == (
            BOS + STANFORD_NO_INPUT.format(instruction="Name a color.") + "Blue." + EOS)


def test_alpaca_with_input_renders_stanford_prompt(registry):
    conv = convert(registry, "alpaca", {"instruction": "Add.", "input": "2 and 2", "output": "4", "id": 7})
    assert msgs(conv) == [("user", "Add.\n\n### Input:\n2 and 2"), ("assistant", "4")]
    assert conv.metadata == {"id": 7}
    assert text(registry, "alpaca", conv) == BOS + STANFORD_WITH_INPUT.format(instruction="Add.", input="2 and 2") + "4" + EOS


def test_alpaca_system_replaces_preamble(registry):
    conv = convert(registry, "alpaca", {"instruction": "Add.", "output": "4", "system": "Be exact."})
    assert text(registry, "alpaca", conv) == BOS + "Be exact.\n\n### Instruction:\nAdd.\n\n### Response:4" + EOS


@pytest.mark.parametrize("record, message", [
    ({"output": "x"}, "missing required field 'instruction'"),
    ({"instruction": "x"}, "missing required field 'output'"),
    ({"instruction": "x", "output": "y", "input": 3}, "field 'input' must be a string, got int"),
    ({"instruction": 1.5, "output": "y"}, "field 'instruction' must be a string, got float"),
])
def test_alpaca_bad_records(registry, record, message):
    with pytest.raises(ValueError) as err:
        convert(registry, "alpaca", record)
    assert message in str(err.value)


# -- upstream QLoRA raw-text formats -------------------------------------------------------------


def test_input_output_and_plain_template_match_upstream_qlora(registry):
    conv = convert(registry, "input-output", {"input": "Translate: chat", "output": " cat", "source": "x"})
    assert msgs(conv) == [("user", "Translate: chat"), ("assistant", " cat")]
    assert conv.metadata == {"source": "x"}
    # upstream: f"{bos}{input}" + f"{output}{eos}"
    assert text(registry, "plain", conv) == BOS + "Translate: chat" + " cat" + EOS
    conv = convert(registry, "input-output", {"input": "", "output": "free text"})
    assert text(registry, "plain", conv) == BOS + "free text" + EOS


def test_self_instruct(registry):
    conv = convert(registry, "self-instruct", {"prompt": "Write a haiku.", "completion": "Leaves fall."})
    assert msgs(conv) == [("user", "Write a haiku."), ("assistant", "Leaves fall.")]
    with pytest.raises(ValueError, match="missing required field 'completion'"):
        convert(registry, "self-instruct", {"prompt": "p"})
    with pytest.raises(ValueError, match="missing required field 'input'"):
        convert(registry, "input-output", {"output": "o"})


def test_chip2_splits_exactly_like_upstream(registry):
    raw = "<human>: What is <human>: a cat?\n<bot>: An animal.\n<bot>: dropped"
    conv = convert(registry, "chip2", {"text": raw})
    upstream_input = raw.split("\n<bot>: ")[0].replace("<human>: ", "")
    upstream_output = raw.split("\n<bot>: ")[1]
    assert msgs(conv) == [("user", upstream_input), ("assistant", upstream_output)]
    assert msgs(conv) == [("user", "What is a cat?"), ("assistant", "An animal.")]
    assert text(registry, "plain", conv) == BOS + "What is a cat?" + "An animal." + EOS


@pytest.mark.parametrize("record, message", [
    ({"text": "<human>: hi <bot>: no newline"}, "no '\\n<bot>: ' separator"),
    ({}, "missing required field 'text'"),
    ({"text": 3}, "field 'text' must be a string, got int"),
])
def test_chip2_bad_records(registry, record, message):
    with pytest.raises(ValueError) as err:
        convert(registry, "chip2", record)
    assert message in str(err.value)


HH = "\n\nHuman: What is a cat?\n\nAssistant: An animal.\n\nHuman: Pet?\n\nAssistant: Often, yes."


def test_hh_rlhf_multi_turn(registry):
    conv = convert(registry, "hh-rlhf", {"chosen": HH, "rejected": "ignored"})
    assert msgs(conv) == [("user", "What is a cat?"), ("assistant", "An animal."),
                          ("user", "Pet?"), ("assistant", "Often, yes.")]
    # the default template puts the upstream text back, with an EOS after each reply
    rendered = text(registry, "hh-rlhf", conv)
    assert rendered == BOS + "\n\nHuman: What is a cat?\n\nAssistant: An animal." + EOS + \
        "\n\nHuman: Pet?\n\nAssistant: Often, yes." + EOS
    assert rendered.replace(EOS, "").replace(BOS, "") == HH


def test_hh_rlhf_skips_empty_and_rejects_bad(registry):
    assert convert(registry, "hh-rlhf", {"chosen": ""}) is None
    assert convert(registry, "hh-rlhf", {"chosen": " \n "}) is None
    with pytest.raises(ValueError, match="conversation ends on a user turn"):
        convert(registry, "hh-rlhf", {"chosen": "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: bye"})
    with pytest.raises(ValueError, match="roles out of order: expected assistant, got user"):
        convert(registry, "hh-rlhf", {"chosen": "\n\nHuman: hi\n\nHuman: again\n\nAssistant: yo"})
    with pytest.raises(ValueError, match="text before the first speaker marker"):
        convert(registry, "hh-rlhf", {"chosen": "preface\n\nHuman: hi\n\nAssistant: yo"})
    with pytest.raises(ValueError, match="no speaker markers"):
        convert(registry, "hh-rlhf", {"chosen": "just text"})
    with pytest.raises(ValueError, match="missing required field 'chosen'"):
        convert(registry, "hh-rlhf", {"rejected": "x"})


OASST = "### Human: Hi there.### Assistant: Hello! How can I help?### Human: A joke.### Assistant: No."


def test_oasst1_multi_turn(registry):
    conv = convert(registry, "oasst1", {"text": OASST})
    assert msgs(conv) == [("user", "Hi there."), ("assistant", "Hello! How can I help?"),
                          ("user", "A joke."), ("assistant", "No.")]
    rendered = text(registry, "oasst1", conv)
    assert rendered.replace(EOS, "").replace(BOS, "") == OASST
    assert rendered.startswith(BOS) and rendered.count(EOS) == 2


def test_oasst1_bad_records(registry):
    assert convert(registry, "oasst1", {"text": ""}) is None
    with pytest.raises(ValueError, match="conversation ends on a user turn"):
        convert(registry, "oasst1", {"text": "### Human: only a question"})
    with pytest.raises(ValueError, match="field 'text' must be a string, got list"):
        convert(registry, "oasst1", {"text": ["a"]})


# -- generic chat formats -------------------------------------------------------------------------


def test_sharegpt_from_value(registry):
    conv = convert(registry, "sharegpt", {"id": "s1", "conversations": [
        {"from": "system", "value": "sys"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
        {"from": "user", "value": "q2"}, {"from": "assistant", "value": "a2"}]})
    assert msgs(conv) == [("system", "sys"), ("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "a2")]
    assert conv.metadata == {"id": "s1"}


def test_sharegpt_role_content_and_text_parts(registry):
    conv = convert(registry, "sharegpt", {"conversations": [
        {"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]},
        {"role": "assistant", "content": "hi"}]})
    assert msgs(conv) == [("user", "hello"), ("assistant", "hi")]


@pytest.mark.parametrize("record, message", [
    ({"conversations": []}, "field 'conversations' is an empty conversation"),
    ({"messages": []}, "missing required field 'conversations'"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "conversations[0]: unknown from 'robot'"),
    ({"conversations": [{"value": "x"}]}, "conversations[0] has neither 'from' nor 'role'"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": {"a": 1}}]},
     "conversations[1].value must be a string (or a list of text parts), got dict"),
    ({"conversations": [{"from": "human", "value": "q"}]}, "conversation ends on a user turn"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                        {"from": "gpt", "value": "b"}]}, "message 2: roles out of order: expected user, got assistant"),
])
def test_sharegpt_bad_records(registry, record, message):
    with pytest.raises(ValueError) as err:
        convert(registry, "sharegpt", record)
    assert message in str(err.value)


def test_messages(registry):
    conv = convert(registry, "messages", {"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "name": "bot"}], "category": "c"})
    assert msgs(conv) == [("system", "s"), ("user", "q"), ("assistant", "a")]
    assert conv.metadata == {"category": "c"}
    assert text(registry, "chatml", conv) == (
        "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n")


@pytest.mark.parametrize("record, message", [
    ({"messages": "hi"}, "field 'messages' must be a list of messages, got str"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]: unsupported role 'tool'"),
    ({"messages": [{"role": "user"}]}, "messages[0] is missing 'content'"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content must be a string"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
                   {"role": "assistant", "content": "a"}]}, "a system message may only come first"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
     "conversation ends on a user turn"),
])
def test_messages_bad_records(registry, record, message):
    with pytest.raises(ValueError) as err:
        convert(registry, "messages", record)
    assert message in str(err.value)


def test_converters_return_validated_conversations(registry):
    conv = convert(registry, "messages", {"messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": "a"}]})
    assert isinstance(conv, Conversation)
    assert all(isinstance(m, Message) for m in conv.messages)


# -- airo.core.records: the helpers every format (built-in or a plugin's) reads records with ------


def test_require_str_and_optional_str():
    from airo.core.records import optional_str, require_str

    assert require_str({"q": " "}, "q") == " "
    assert optional_str({}, "s") is None and optional_str({"s": None}, "s") is None
    for record, problem in [({}, "missing required field 'q'"), ({"q": None}, "missing required field 'q'"),
                            ({"q": 1}, "field 'q' must be a string, got int")]:
        with pytest.raises(ValueError, match=problem):
            require_str(record, "q")
    with pytest.raises(ValueError, match="field 'q' is empty"):
        require_str({"q": " \n"}, "q", nonblank=True)
    with pytest.raises(ValueError, match="field 's' must be a string, got list"):
        optional_str({"s": []}, "s")


def test_record_metadata_fills_only_what_is_missing():
    from airo.core.records import record_metadata

    record = {"id": 7, "category": "", "source": None, "other": "x"}
    assert record_metadata(record) == {"id": 7}  # null and empty values count as absent
    own = {"id": "mine", "hint": True}
    assert record_metadata({"id": 1, "source": "s"}, own) is own
    assert own == {"id": "mine", "hint": True, "source": "s"}


def test_exchange_messages_drops_an_empty_system():
    from airo.core.records import exchange_messages

    roles = lambda messages: [(m.role, m.content) for m in messages]  # noqa: E731
    assert roles(exchange_messages("q", "a")) == [("user", "q"), ("assistant", "a")]
    assert roles(exchange_messages("q", "a", "")) == [("user", "q"), ("assistant", "a")]
    assert roles(exchange_messages("q", "a", " ")) == [("system", " "), ("user", "q"), ("assistant", "a")]


def test_message_helpers():
    from airo.core.records import check_record, is_truthy, message_objects, require_keys, text_content

    with pytest.raises(ValueError, match="record must be a JSON object, got null"):
        check_record(None)
    assert [(i, where) for i, where, _ in message_objects({"turns": [{}, {}]}, "turns")] == [
        (0, "turns[0]"), (1, "turns[1]")]
    with pytest.raises(ValueError, match=r"turns\[1\] must be an object with 'a', got str"):
        list(message_objects({"turns": [{}, "x"]}, "turns", keys="'a'"))
    with pytest.raises(ValueError, match=r"turns\[0\] is missing 'b'"):
        require_keys({"a": 1}, ("a", "b"), "turns[0]")
    assert text_content([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "x") == "ab"
    with pytest.raises(ValueError, match="x must be a string"):
        text_content([{"type": "image"}], "x")
    assert [is_truthy(v) for v in ("False", "no", "", "1", "yes", 0, 2)] == [False, False, False, True, True,
                                                                              False, True]
