"""The example plugin's own tests, written the way a plugin author would write them."""

import pytest

import airo_plugin_example
from airo.core import Conversation, Message
from airo.core.testing import build_tiny_tokenizer, registered_plugin

NAME = "example-qa"


def test_registers_format_and_template():
    with registered_plugin(airo_plugin_example) as registry:
        fmt = registry.get("formats", NAME)
        assert fmt.default_template == NAME
        assert registry.get("templates", NAME).template is airo_plugin_example.QA_TEMPLATE


def test_fixture_registers_the_plugin(airo_plugin):
    registry = airo_plugin(airo_plugin_example)
    assert registry.formats[NAME].converter is airo_plugin_example.qa_pairs


def test_converter():
    conv = airo_plugin_example.qa_pairs({"question": "2+2?", "answer": "4", "system": "Be brief.", "id": 7})
    assert [(m.role, m.content) for m in conv.messages] == [("system", "Be brief."), ("user", "2+2?"),
                                                             ("assistant", "4")]
    assert conv.metadata == {"id": 7}
    assert [m.role for m in airo_plugin_example.qa_pairs({"question": "q", "answer": "a"}).messages] == [
        "user", "assistant"]


@pytest.mark.parametrize("skip, skipped", [(True, True), ("yes", True), (False, False), ("false", False)])
def test_skip_flag(skip, skipped):
    result = airo_plugin_example.qa_pairs({"question": "q", "answer": "a", "skip": skip})
    assert (result is None) == skipped


@pytest.mark.parametrize("record, problem", [
    ({"answer": "4"}, "missing required field 'question'"),
    ({"question": "2+2?", "answer": " "}, "field 'answer' is empty"),
    ({"question": "2+2?", "answer": 4}, "field 'answer' must be a string, got int"),
    ({"question": "2+2?", "answer": "4", "system": ["x"]}, "field 'system' must be a string, got list"),
    (["not", "an", "object"], "record must be a JSON object, got list"),
])
def test_bad_records_raise_value_error(record, problem):
    with pytest.raises(ValueError, match=problem):
        airo_plugin_example.qa_pairs(record)


def test_render_marks_replies():
    conv = Conversation([Message("user", "2+2?"), Message("assistant", "4"),
                         Message("user", "3+3?"), Message("assistant", "6")])
    segments = airo_plugin_example.QA_TEMPLATE.render(conv, bos_token="<s>", eos_token="</s>")
    assert [(s.text, s.reply, s.turn) for s in segments] == [
        ("<s>Q: 2+2?\nA: ", False, 0), ("4</s>", True, 0),
        ("Q: 3+3?\nA: ", False, 1), ("6</s>", True, 1),
    ]


@pytest.mark.parametrize("system", [None, "You answer in one word."])
def test_chat_template_matches_render(tmp_path, system):
    """The Jinja template an inference engine uses renders the prompt the model was trained on."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path / "tok"))
    template = airo_plugin_example.QA_TEMPLATE
    messages = ([Message("system", system)] if system else []) + [
        Message("user", "hi"), Message("assistant", "hello"), Message("user", "2+2?"), Message("assistant", "4")]
    segments = template.render(Conversation(messages), bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
    # Everything before the last reply is the prompt of the last turn.
    prompt = "".join(s.text for s in segments[:-1])
    jinja = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages[:-1]],
                                          chat_template=template.chat_template, tokenize=False,
                                          add_generation_prompt=True)
    assert jinja == prompt
