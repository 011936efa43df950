"""A short run logs its training loss: the seed's default --logging_steps 10 logged nothing in
a 9-step run (a one-point loss curve, a model card without a final loss)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airo.core.training.recipe import _log_short_runs


@pytest.mark.parametrize("steps, explicit, given, expected", [
    (9, set(), 10, 1),        # shorter than ten logging intervals: every step
    (50, set(), 10, 5),       # ten points on the curve
    (100, set(), 10, 10),     # the seed's interval already gives ten
    (5000, set(), 10, 10),
    (9, {"logging_steps"}, 10, 10),  # the user's choice stands
    (9, set(), 0.1, 0.1),     # transformers' ratio of the run
])
def test_the_logging_interval_follows_the_run_length(steps, explicit, given, expected):
    run = SimpleNamespace(args=SimpleNamespace(logging_steps=given), steps=steps,
                          config=SimpleNamespace(explicit=explicit))
    _log_short_runs(run)
    assert run.args.logging_steps == expected


@pytest.mark.slow
def test_a_nine_step_run_logs_every_step_and_its_card_has_the_final_loss(tiny_model_dir, tmp_path, airo_env):
    import json

    from airo.core.config import build_config
    from airo.core.training import run_training
    from conftest import EXAMPLES

    run_training(build_config(None, [
        "--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path / "out"),
        "--dataset", str(EXAMPLES / "data" / "conversations.json"), "--dataset_format", "airoboros_chat",
        "--model_max_len", "256", "--max_steps", "9", "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "1", "--bits", "32", "--lora_r", "4", "--eval_dataset_size", "0",
        "--save_strategy", "no", "--report_to", "none"]))
    rows = [json.loads(x) for x in (tmp_path / "out-checkpoints" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 10))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Final train loss" in card
