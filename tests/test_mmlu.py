"""The built-in ``mmlu`` evaluation: the seed's flags and files, and its score recomputed
independently (own forward pass and argmax) against what airo logs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

SUBJECTS = ("anatomy", "astronomy", "virology")


def write_mmlu(path: Path, n: int = 14, seed: int = 0) -> list[dict]:
    """A made-up MMLU-format file: {"input", "output": A-D, "subject"} records."""
    rng = random.Random(seed)
    words = "the of a planet cell virus bone star light mass blood orbit gene".split()
    records = []
    for i in range(n):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        choices = "\n".join(f"{letter}. {rng.choice(words)}" for letter in "ABCD")
        records.append({"input": f"Question {i}: {question}?\n{choices}\nAnswer:",
                        "output": rng.choice("ABCD"), "subject": SUBJECTS[i % len(SUBJECTS)]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return records


def independent_scores(model, tokenizer, records: list[dict], split: str) -> dict[str, float]:
    """The seed's metrics, one question at a time, without airo's code."""
    import torch

    abcd = [tokenizer(letter, add_special_tokens=False).input_ids[-1] for letter in "ABCD"]
    hits: dict[str, list[bool]] = {}
    losses = []
    model.eval()
    with torch.no_grad():
        for record in records:
            ids = tokenizer(tokenizer.bos_token + record["input"], add_special_tokens=False).input_ids
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            answer = abcd["ABCD".index(record["output"])]
            losses.append(torch.nn.functional.cross_entropy(logits[None], torch.tensor([answer])).item())
            hits.setdefault(record["subject"], []).append(int(logits[abcd].argmax()) == "ABCD".index(record["output"]))
    out = {f"mmlu_{split}_accuracy_{s}": sum(h) / len(h) for s, h in hits.items()}
    out[f"mmlu_{split}_accuracy"] = sum(out.values()) / len(out)
    out["mmlu_loss"] = sum(losses) / len(losses)
    return out


def assert_same_scores(logged: dict, expected: dict) -> None:
    accuracies = {k: v for k, v in expected.items() if "accuracy" in k}
    assert {k: logged[k] for k in accuracies} == pytest.approx(accuracies, abs=1e-9)
    assert logged["mmlu_loss"] == pytest.approx(expected["mmlu_loss"], rel=1e-4)
    assert not set(k for k in logged if k.startswith("mmlu_")) - set(expected)


def _config(*argv):
    from airo.core.config import build_config

    return build_config(None, ["--output_dir", "o", *map(str, argv)])


# -- flags and files ----------------------------------------------------------------------------

def test_seed_flags_are_options_and_no_longer_ignored(airo_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mmlu(tmp_path / "data" / "mmlu" / "zero_shot_mmlu_test.json")
    config = _config("--do_mmlu_eval", "--mmlu_dataset", "mmlu-zs", "--mmlu_split", "test",
                     "--max_mmlu_samples", "5", "--mmlu_source_max_len", "64")
    assert not [w for w in config.warnings if "ignored" in w], config.warnings
    options = config.section("mmlu")
    assert (options.do_mmlu_eval, options.mmlu_split, options.max_mmlu_samples, options.mmlu_source_max_len) \
        == (True, "test", 5, 64)
    assert options.path() == Path("data/mmlu/zero_shot_mmlu_test.json")
    assert _config("--mmlu_dataset", "mmlu").section("mmlu").path() == Path("data/mmlu/five_shot_mmlu_val.json")
    own = tmp_path / "mine.json"
    write_mmlu(own)
    assert _config("--do_mmlu_eval", "--mmlu_dataset", own).section("mmlu").path() == own


def test_missing_or_bad_files_fail_at_config_time_naming_the_path(airo_env, tmp_path, monkeypatch):
    from airo.core.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"--do_mmlu_eval: data/mmlu/five_shot_mmlu_val.json not found"):
        _config("--do_mmlu_eval")
    with pytest.raises(ConfigError, match=r"elsewhere/zero_shot_mmlu_test.json not found"):
        _config("--do_mmlu_eval", "--mmlu_dataset", "mmlu-zs", "--mmlu_split", "test", "--mmlu_data_dir", "elsewhere")
    _config("--mmlu_dataset", "nowhere.json")  # not asked for: not checked
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"input": "Q?", "output": "A", "subject": "x"}, {"input": "Q?", "output": "E"}]))
    with pytest.raises(ConfigError, match=r"bad.json.*1.*'output' must be one of A, B, C, D, got 'E'"):
        _config("--do_mmlu_eval", "--mmlu_dataset", bad)
    with pytest.raises(ConfigError, match="--mmlu_split must be eval or test"):
        _config("--mmlu_split", "val")
    write_mmlu(tmp_path / "data" / "mmlu" / "five_shot_mmlu_val.json")
    with pytest.raises(ConfigError, match="--do_mmlu_eval scores at each evaluation, and this run has none"):
        _config("--do_mmlu_eval", "--eval_dataset_size", "0")


def test_json_lines_and_missing_subject(tmp_path):
    from airo.plugins.mmlu import load_questions

    path = tmp_path / "q.jsonl"
    path.write_text('{"input": "Q1?", "output": "B"}\n\n{"input": "Q2?", "output": "C", "subject": "law"}\n')
    assert [q["subject"] for q in load_questions(path)] == ["all", "law"]


# -- the score ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _trainer(model, tokenizer, tmp_path, eval_dataset=None, batch_size=4):
    from transformers import Trainer, TrainingArguments

    from airo.core.data.collator import PaddingCollator

    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, per_device_eval_batch_size=batch_size,
                             report_to="none", remove_unused_columns=False)
    return Trainer(model=model, args=args, eval_dataset=eval_dataset, processing_class=tokenizer,
                   data_collator=PaddingCollator(tokenizer.pad_token_id))


def test_logged_accuracy_equals_an_independent_computation(airo_env, tiny, tmp_path, monkeypatch):
    """airo's callback, at a real trainer.evaluate(), logs what one-question-at-a-time scoring gives."""
    from datasets import Dataset

    from airo.core.training.evaluation import evaluation_callback

    model, tokenizer = tiny
    monkeypatch.chdir(tmp_path)
    records = write_mmlu(tmp_path / "data" / "mmlu" / "five_shot_mmlu_val.json", n=17)
    config = _config("--do_mmlu_eval")
    eval_set = Dataset.from_list([{"input_ids": [1, 5, 6, 7], "labels": [-100, -100, 6, 7]}])
    trainer = _trainer(model, tokenizer, tmp_path, eval_set, batch_size=5)  # 17 = 3 full batches + 2
    callback = evaluation_callback(trainer, config, None, str(tmp_path))
    trainer.add_callback(callback)
    trainer.evaluate()
    logged = next(entry for entry in trainer.state.log_history if "mmlu_loss" in entry)
    expected = independent_scores(model, tokenizer, records, "eval")
    assert_same_scores(logged, expected)
    assert set(expected) == {"mmlu_loss", "mmlu_eval_accuracy", *(f"mmlu_eval_accuracy_{s}" for s in SUBJECTS)}
    assert callback.metrics() == {k: logged[k] for k in expected}


def test_max_samples_truncation_and_a_model_without_logits_to_keep(tiny, tmp_path, monkeypatch, airo_env):
    """--max_mmlu_samples keeps the first N; --mmlu_source_max_len keeps a question's last tokens;
    a model whose forward() has no logits_to_keep is scored on its full logits, the same way."""
    import torch

    from airo.core.training.evaluation import EvaluationContext
    from airo.plugins.mmlu import encode, mmlu

    model, tokenizer = tiny
    monkeypatch.chdir(tmp_path)
    records = write_mmlu(tmp_path / "q.json", n=9, seed=3)
    config = _config("--do_mmlu_eval", "--mmlu_dataset", tmp_path / "q.json", "--max_mmlu_samples", "6",
                     "--mmlu_source_max_len", "12")

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    def run(with_model):
        trainer = _trainer(with_model, tokenizer, tmp_path, batch_size=4)
        ctx = EvaluationContext(config=config, model=with_model, tokenizer=tokenizer, template=None,
                                trainer=trainer, working_dir=str(tmp_path))
        with torch.no_grad():
            return mmlu(ctx)

    sequences = encode(tokenizer, records[:6], 12)
    assert all(len(s) <= 12 for s in sequences) and any(len(s) == 12 for s in sequences)
    full = tokenizer(tokenizer.bos_token + records[0]["input"], add_special_tokens=False).input_ids
    assert sequences[0] == full[-12:]
    kept, plain = run(model), run(Plain())
    assert kept == pytest.approx(plain, abs=1e-5)

    abcd = [tokenizer(letter, add_special_tokens=False).input_ids[-1] for letter in "ABCD"]
    with torch.no_grad():
        preds = [int(model(input_ids=torch.tensor([s])).logits[0, -1][abcd].argmax()) for s in sequences]
    hits = {}
    for record, pred in zip(records[:6], preds):
        hits.setdefault(record["subject"], []).append("ABCD"[pred] == record["output"])
    assert {k: v for k, v in kept.items() if "accuracy_" in k} == \
        {f"mmlu_eval_accuracy_{s}": sum(h) / len(h) for s, h in hits.items()}


def test_off_by_default(airo_env, tmp_path):
    from airo.plugins.mmlu import mmlu

    class Ctx:
        config = _config()

    assert mmlu(Ctx()) == {}
