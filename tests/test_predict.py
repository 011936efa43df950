"""The built-in ``predict`` action (--do_predict / --predict_with_generate): its flags, and the
predictions it writes for the eval examples."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest


def _config(*argv):
    from airo.core.config import build_config

    return build_config(None, ["--output_dir", "o", *map(str, argv)])


def test_seed_generation_flags_are_options(airo_env):
    from airo.plugins.predict import predicts

    config = _config("--do_predict", "--predict_with_generate", "--max_new_tokens", "32", "--min_new_tokens", "2",
                     "--do_sample", "--num_beams", "1", "--temperature", "0.7", "--top_p", "0.9", "--top_k", "20",
                     "--repetition_penalty", "1.1")
    assert not [w for w in config.warnings if "ignored" in w], config.warnings
    options = config.section("predict")
    assert options.generation_kwargs() == {"max_new_tokens": 32, "min_new_tokens": 2, "num_beams": 1, "do_sample": True,
                                           "repetition_penalty": 1.1, "no_repeat_ngram_size": 0, "use_cache": True,
                                           "temperature": 0.7, "top_p": 0.9, "top_k": 20, "typical_p": 1.0}
    assert config.training["do_predict"] is True  # still the TrainingArguments flag
    assert predicts(config) and predicts(_config("--predict_with_generate")) and not predicts(_config())
    greedy = _config("--temperature", "0.5").section("predict").generation_kwargs()
    assert "temperature" not in greedy and "length_penalty" not in greedy  # only what the decoding uses


def test_bad_generation_flags(airo_env):
    from airo.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--min_new_tokens must be between 0 and --max_new_tokens"):
        _config("--max_new_tokens", "4", "--min_new_tokens", "5")
    with pytest.raises(ConfigError, match="--num_beams must be at least 1"):
        _config("--num_beams", "0")
    with pytest.raises(ConfigError, match="--eval_dataset_size 0 leaves none"):
        _config("--do_predict", "--eval_dataset_size", "0")


def test_prompt_and_reference():
    from airo.plugins.predict import prompt_and_reference

    ids = [1, 10, 11, 12, 13, 14, 15, 16]
    labels = [-100, -100, -100, 12, 13, -100, 15, 16]
    assert prompt_and_reference(ids, labels) == ([1, 10, 11], [12, 13])
    assert prompt_and_reference(ids, ids) == ([1], ids[1:])  # --train_on_source
    assert prompt_and_reference(ids, [-100] * 8) == (ids, [])


def test_predictions_match_one_prompt_at_a_time_generation(airo_env, tiny_model_dir, tmp_path):
    """Batched, left-padded generation gives each prompt the reply it gets alone."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from airo.plugins.predict import predict

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    examples = [{"input_ids": [1, 30, 31, 32, 40, 41, 2], "labels": [-100, -100, -100, -100, 40, 41, 2]},
                {"input_ids": [1, 50, 60, 61], "labels": [-100, -100, 60, 61]},
                {"input_ids": [1, 70, 71, 72, 73, 74, 80], "labels": [-100] * 6 + [80]}]
    trainer = SimpleNamespace(eval_dataset=Dataset.from_list(examples),
                              args=SimpleNamespace(per_device_eval_batch_size=2))
    config = _config("--do_predict", "--max_new_tokens", "5")
    model.train()
    ctx = SimpleNamespace(config=config, model=model, tokenizer=tokenizer, trainer=trainer, working_dir=str(tmp_path),
                          outputs={}, log=lambda message: None)
    predict(ctx)
    assert model.training  # put back
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    model.eval()
    for i, (row, example) in enumerate(zip(rows, examples)):
        first = next(j for j, label in enumerate(example["labels"]) if label != -100)
        prompt = example["input_ids"][:first]
        alone = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=5, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
        assert row == {"id": i, "prompt": tokenizer.decode(prompt, skip_special_tokens=True),
                       "reference": tokenizer.decode(example["input_ids"][first:], skip_special_tokens=True),
                       "prediction": tokenizer.decode(alone[0, len(prompt):], skip_special_tokens=True)}
    assert ctx.outputs == {"predictions": str(tmp_path / "predictions.jsonl")}


def test_no_eval_examples_writes_nothing(airo_env, tmp_path):
    from airo.plugins.predict import predict

    said = []
    ctx = SimpleNamespace(config=_config("--do_predict"), trainer=SimpleNamespace(eval_dataset=None),
                          working_dir=str(tmp_path), outputs={}, log=said.append)
    predict(ctx)
    assert not (tmp_path / "predictions.jsonl").exists() and "has no eval examples" in said[0]
