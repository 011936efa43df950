"""The first ten minutes: readable previews off a terminal, `airo list` of everything, log
lines with numbers as numbers, and what to do after training."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLES, REPO, run_cli


@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_preview_marks_trained_tokens_when_not_on_a_terminal(airo_env):
    result = run_cli("preview", EXAMPLES / "demo.yaml", "-n", "1", cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("--- example 0:") and "[[" in result.stdout and "]]" in result.stdout
    assert lines[-1] == "[[...]]: trained tokens; the rest is masked (label -100)"
    # what is inside the brackets is exactly what is trained
    examples = json.loads(run_cli("preview", EXAMPLES / "demo.yaml", "-n", "1", "--json", cwd=REPO).stdout)
    trained = "".join(p["text"] for p in examples[0]["tokens"] if p["trained"])
    from airo.core.data.preview import plain_text

    marked = plain_text(examples[0])
    assert "".join(part.split("]]")[0] for part in marked.split("[[")[1:]) == trained


def test_airo_list_without_a_kind_lists_everything(airo_env):
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    for kind in ("formats:", "templates:", "loaders:", "actions:", "patches:", "options:"):
        assert kind in result.stdout, kind
    assert "  qlora" in result.stdout and "airoboros_chat" in result.stdout
    everything = json.loads(run_cli("list", "--json").stdout)
    assert {"formats", "templates", "loaders", "actions", "patches", "options"} <= set(everything)


def test_log_lines_show_numbers():
    from airo.core.training.callbacks import format_log

    line = format_log(10, {"loss": 6.19812, "grad_norm": 0.110234, "learning_rate": 2e-4, "epoch": 1.0,
                           "num_input_tokens_seen": 10815, "total_flos": 123.0})
    assert line == ("step 10: loss 6.198, grad_norm 0.1102, learning_rate 0.0002, epoch 1, "
                    "num_input_tokens_seen 10815")


def test_the_summary_says_what_to_do_next():
    from airo.core.training import TrainResult

    result = TrainResult(output_dir="out", working_dir="out-checkpoints", global_step=3,
                         outputs={"adapter": "out", "merged model": "my merged"})
    text = result.summary()
    assert "airo chat 'my merged'" in text and "airo generate 'my merged' --prompt" in text
    assert "airo plot out-checkpoints" in text
    assert "airo chat out" in TrainResult(output_dir="out", working_dir="w", outputs={"adapter": "out"}).summary()
    assert "Next:" not in TrainResult(output_dir="out", working_dir="w").summary()
