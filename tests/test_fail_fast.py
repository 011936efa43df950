"""A run reads, checks, counts and tokenizes its data before the model loads: a data mistake
costs seconds, not a model load. The loader and the model's weights are never touched."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLES

CONVERSATIONS = EXAMPLES / "data" / "conversations.json"


def _config(*argv):
    from airo.core.config import build_config

    return build_config(None, list(map(str, argv)))


@pytest.fixture
def no_model_load(monkeypatch):
    """Every model load fails the test: the run must have stopped before it."""
    import transformers

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _bad_line(records: list, line_number: int, text: str) -> str:
    lines = [json.dumps(r) for r in records]
    lines.insert(line_number - 1, text)
    return "\n".join(lines) + "\n"


def _records(n: int) -> list[dict]:
    return [{"instruction": f"What is {i} + {i}?", "output": f"{i} + {i} = {2 * i}."} for i in range(n)]


@pytest.mark.parametrize("bad", [
    "{not json",                                  # a syntax error
    json.dumps({"instruction": 3, "output": ["not", "text"]}),  # wrong types for the format
    json.dumps({"output": "no instruction"}),   # a required field missing
    "[1, 2, 3]",                                  # not an object
])
def test_a_bad_record_fails_before_the_model_loads(tmp_path, airo_env, tiny_model_dir, no_model_load, bad):
    from airo.core.errors import DataError
    from airo.core.training import run_training

    data = tmp_path / "data.jsonl"
    data.write_text(_bad_line(_records(6), 4, bad))
    config = _config("--model_name_or_path", tiny_model_dir, "--dataset", data, "--dataset_format", "alpaca",
                     "--output_dir", tmp_path / "out", "--max_steps", 1)
    with pytest.raises(DataError) as raised:
        run_training(config)
    message = str(raised.value)
    assert str(data) in message and "line 4" in message
    assert not (tmp_path / "out").exists()  # nothing looks like an output


def test_no_example_left_fails_before_the_model_loads(tmp_path, airo_env, tiny_model_dir, no_model_load):
    from airo.core.errors import AiroError
    from airo.core.training import run_training

    data = tmp_path / "data.jsonl"
    long = [{"instruction": "Say it again and again. " * 40, "output": "again " * 40} for _ in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in long))
    config = _config("--model_name_or_path", tiny_model_dir, "--dataset", data, "--dataset_format", "alpaca",
                     "--output_dir", tmp_path / "out", "--max_steps", 1, "--model_max_len", 16,
                     "--on_bad_record", "skip", "--eval_dataset_size", 0)
    with pytest.raises(AiroError, match="no training examples left"):
        run_training(config)


def test_the_loader_gets_the_tokenizer_the_data_was_tokenized_with(tmp_path, airo_env, tiny_model_dir, monkeypatch):
    """One tokenizer per run: the loader's call returns the one the data pipeline used."""
    from airo.core import tokenizer as tokenizer_module
    from airo.core.tokenizer import load_tokenizer

    calls = []
    real = tokenizer_module._load_tokenizer
    monkeypatch.setattr(tokenizer_module, "_load_tokenizer", lambda config: calls.append(1) or real(config))
    config = _config("--model_name_or_path", tiny_model_dir, "--dataset", CONVERSATIONS, "--output_dir", tmp_path)
    first = load_tokenizer(config)
    assert load_tokenizer(config) is first and len(calls) == 1
    config.model.pad_token = "<s>"  # another tokenizer option: loaded anew
    assert load_tokenizer(config) is not first and len(calls) == 2
