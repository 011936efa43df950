"""register_evaluations / register_callbacks: evaluations run at each trainer evaluation and
are logged through it; a failing one names its plugin and the training goes on; callbacks
from plugins join the Trainer. End to end with a third-party plugin installed in a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airo.core import hookimpl
from conftest import EXAMPLES


class Evaluations:
    def __init__(self):
        self.seen = []

    @hookimpl
    def register_evaluations(self, register):
        import torch

        def probe(ctx):
            self.seen.append((ctx.model.training, torch.is_grad_enabled(), ctx.step, ctx.rank, ctx.world_size))
            batch, lengths = next(ctx.batches([[1, 5, 6], [1, 7]], batch_size=2))
            assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 7, ctx.tokenizer.pad_token_id]]
            assert lengths == [3, 2] and batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
            return {"t_probe": torch.tensor(0.5), "t_count": 2}

        register("t-probe", probe, description="probe")
        register("t-broken", lambda ctx: 1 / 0)
        register("t-shape", lambda ctx: {"t_x": "high"})
        register("t-clash", lambda ctx: {"t_probe": 9.0, "t_other": 1.0})


def _trainer(tiny_model_dir, tmp_path):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from airo.core.data.collator import PaddingCollator

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none",
                             remove_unused_columns=False)
    eval_set = Dataset.from_list([{"input_ids": [1, 5, 6, 7], "labels": [-100, -100, 6, 7]}])
    return Trainer(model=model, args=args, eval_dataset=eval_set, processing_class=tokenizer,
                   data_collator=PaddingCollator(tokenizer.pad_token_id))


def test_evaluations_are_logged_and_failures_name_their_plugin(airo_env, airo_plugin, tiny_model_dir, tmp_path,
                                                              capsys):
    from airo.core.config import build_config
    from airo.core.training.evaluation import evaluation_callback

    plugin = Evaluations()
    registry = airo_plugin(plugin, name="t-evals")
    trainer = _trainer(tiny_model_dir, tmp_path)
    trainer.model.train()
    callback = evaluation_callback(trainer, build_config(None, ["--output_dir", "o"]), None, str(tmp_path), registry)
    trainer.add_callback(callback)
    trainer.evaluate()
    out = capsys.readouterr().out
    assert plugin.seen == [(False, False, 0, 0, 1)]  # eval mode, no grad
    logged = [entry for entry in trainer.state.log_history if "t_probe" in entry]
    assert len(logged) == 1 and logged[0]["t_probe"] == 0.5 and logged[0]["t_count"] == 2.0
    assert logged[0]["t_other"] == 1.0  # a clashing name is dropped, the rest of that evaluation kept
    assert "evaluation 't-clash' returned t_probe, which another evaluation returned too" in out
    assert ("plugin 't-evals' (distribution <registered in code>): evaluation 't-broken' run() failed: "
            "ZeroDivisionError: division by zero; nothing of it is logged at step 0, the training goes on") in out
    assert "evaluation 't-shape' run() must return {metric name: number}, but it returned 't_x': 'high'" in out
    assert callback.metrics() == {"t_probe": 0.5, "t_count": 2.0, "t_other": 1.0}
    assert callback.summary_lines(shown=1) == ["evaluation t-probe (step 0): t_probe 0.5, and 1 more in metrics.jsonl",
                                               "evaluation t-clash (step 0): t_other 1"]
    trainer.model.train()  # called from the training loop: the model is put back in training mode
    callback.on_evaluate(trainer.args, trainer.state, trainer.control)
    assert plugin.seen[-1][:2] == (False, False) and trainer.model.training


def test_ranks_are_averaged_and_a_failure_on_one_rank_drops_the_evaluation():
    from airo.core.training.evaluation import _merge

    outcomes = [{"a": {"m": 1.0}, "b": {"x": 1.0}, "c": {"y": 1.0}},
                {"a": {"m": 0.0}, "b": "plugin 'p': boom", "c": {"z": 1.0}}]
    results, failures = _merge(outcomes, ["a", "b", "c"])
    assert results == {"a": {"m": 0.5}}
    assert failures == {"b": "rank 1: plugin 'p': boom",
                        "c": "evaluation 'c' returned different metric names on different ranks"}


def test_callbacks_from_plugins(airo_env, airo_plugin, tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    from airo.core.errors import PluginError
    from airo.core.training.evaluation import CallbackContext, install, plugin_callbacks

    made = []

    class Mine(TrainerCallback):
        pass

    class Plugin:
        @hookimpl
        def register_callbacks(self, register):
            register("t-instance", lambda ctx: made.append(ctx) or Mine())
            register("t-class", lambda ctx: Mine)

    registry = airo_plugin(Plugin(), name="t-callbacks")
    trainer = _trainer(tiny_model_dir, tmp_path)
    loop = install(trainer, "config", "template", str(tmp_path))
    assert len(loop.callbacks) == 2 and all(isinstance(cb, Mine) for cb in loop.callbacks)
    assert sum(isinstance(cb, Mine) for cb in trainer.callback_handler.callbacks) == 2
    assert loop.evaluations in trainer.callback_handler.callbacks
    assert (made[0].trainer, made[0].config, made[0].template) == (trainer, "config", "template")

    class Wrong:
        @hookimpl
        def register_callbacks(self, register):
            register("t-wrong", lambda ctx: object())

    registry = airo_plugin(Wrong(), name="t-wrong")
    ctx = CallbackContext(config=None, model=None, tokenizer=None, template=None, trainer=trainer, working_dir=".")
    with pytest.raises(PluginError, match=r"^plugin 't-wrong' \(distribution <registered in code>\): trainer callback 't-wrong' "
                                          r"factory\(\) must return a transformers.TrainerCallback, got object$"):
        plugin_callbacks(ctx, registry)


# -- a third-party plugin, installed in a folder, during `airo train` ------------------------------

THIRD_PARTY = '''
import json
from pathlib import Path

from transformers import TrainerCallback
from airo.core import hookimpl


def answer_length(ctx):
    return {"answer_tokens": float(len(ctx.tokenizer("hello world").input_ids)), "seen_step": float(ctx.step)}


class Marker(TrainerCallback):
    def __init__(self, folder):
        self.folder = Path(folder)
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        (self.folder / "marker.json").write_text(json.dumps({"steps": self.steps}))


@hookimpl
def register_evaluations(register):
    register("answer-length", answer_length, description="tokens of a fixed answer")


@hookimpl
def register_callbacks(register):
    register("marker", lambda ctx: Marker(ctx.working_dir))
'''


@pytest.mark.slow
def test_a_third_party_evaluation_and_callback_run_during_airo_train(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from test_mmlu import assert_same_scores, independent_scores, write_mmlu

    questions = write_mmlu(tmp_path / "data" / "mmlu" / "five_shot_mmlu_test.json", n=10)
    site = tmp_path / "site"
    info = site / "airo_evalplug-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: airo-evalplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[airo]\nevalplug = airo_evalplug\n")
    (site / "airo_evalplug.py").write_text(textwrap.dedent(THIRD_PARTY))
    env = dict(os.environ, AIRO_CACHE=str(tmp_path / "cache"), AIRO_STRICT_PLUGINS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    work = tmp_path / "work"
    run = subprocess.run(
        [sys.executable, "-m", "airo.core", "train", "--model_name_or_path", tiny_model_dir,
         "--dataset", EXAMPLES / "data" / "conversations.json", "--dataset_format", "airoboros_chat",
         "--model_max_len", "512", "--bits", "32", "--lora_r", "4", "--max_steps", "2", "--eval_dataset_size", "4",
         "--gradient_accumulation_steps", "1", "--eval_strategy", "steps", "--eval_steps", "1", "--report_to", "none",
         "--output_dir", tmp_path / "out", "--working_dir", work,
         # the built-ins on the same run: the seed's MMLU score and predictions
         "--do_mmlu_eval", "--mmlu_split", "test", "--do_predict", "--predict_with_generate", "--max_new_tokens", "4"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "answer_tokens" in r]
    assert [(r["step"], r["seen_step"]) for r in evaluated] == [(1, 1.0), (2, 2.0)]
    assert json.loads((work / "marker.json").read_text()) == {"steps": [1, 2]}
    assert "evaluation answer-length (step 2): answer_tokens" in run.stdout + run.stderr
    completed = json.loads((work / "completed").read_text())
    assert completed["metrics"]["seen_step"] == 2.0
    assert not [line for line in run.stdout.splitlines() if "ignored" in line]

    # the MMLU score logged at the last step is the trained adapter's, recomputed independently
    mmlu = [r for r in records if "mmlu_loss" in r]
    assert [r["step"] for r in mmlu] == [1, 2]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trained = PeftModel.from_pretrained(base, tmp_path / "out")
    assert_same_scores(mmlu[-1], independent_scores(trained, tokenizer, questions, "test"))

    rows = [json.loads(line) for line in (work / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    assert all(set(r) == {"id", "prompt", "reference", "prediction"} and r["prompt"] and r["reference"] for r in rows)
    assert completed["outputs"]["predictions"] == str(work / "predictions.jsonl")
