"""The recipe as its stages: each a function of one Run, callable alone; run_training calls
exactly STAGES, in the order the docs state."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import EXAMPLES, REPO

CONVERSATIONS = EXAMPLES / "data" / "conversations.json"


def _config(*argv):
    from airo.core.config import build_config

    return build_config(None, list(map(str, argv)))


def _flags(tmp_path, model, *extra):
    return ("--model_name_or_path", model, "--dataset", CONVERSATIONS, "--dataset_format", "airoboros_chat",
            "--output_dir", tmp_path / "out", "--working_dir", tmp_path / "work", "--max_steps", 2,
            "--per_device_train_batch_size", 2, "--bits", 32, "--lora_r", 4, "--eval_dataset_size", 0,
            "--gradient_accumulation_steps", 1, "--logging_steps", 1, "--report_to", "none", *extra)


def _stage_names():
    from airo.core.training.recipe import STAGES

    return [stage.__name__ for stage in STAGES]


# -- the docs state the code's order ---------------------------------------------------------

def test_the_package_docstring_lists_the_stages_in_the_codes_order():
    import airo.core.training as training

    listed = re.findall(r"^\d+\. ``(\w+)``", training.__doc__, re.M)
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ``\w+``", training.__doc__, re.M)]
    assert listed == _stage_names()
    assert numbers == list(range(1, len(listed) + 1))


def test_contributings_architecture_diagram_lists_the_stages_in_the_codes_order():
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    section = text.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    diagram = section.split("```text", 1)[1].split("```", 1)[0]
    listed = re.findall(r"^ +(\d+) (\w+) ", diagram, re.M)
    assert [name for _, name in listed] == _stage_names()
    assert [int(n) for n, _ in listed] == list(range(1, len(listed) + 1))


def test_every_stage_is_a_documented_function_of_the_run():
    import inspect

    from airo.core.training.recipe import STAGES

    for stage in STAGES:
        assert list(inspect.signature(stage).parameters) == ["run"], stage.__name__
        assert stage.__doc__, f"{stage.__name__} has no docstring"


# -- stages called alone ---------------------------------------------------------------------

def test_plan_alone_chooses_the_loader_and_actions_and_checks_their_folders(tmp_path, airo_env, tiny_model_dir):
    from airo.core.errors import ConfigError
    from airo.core.training.recipe import plan
    from airo.core.training.run import Run

    run = Run.start(_config(*_flags(tmp_path, tiny_model_dir)))
    plan(run)
    assert run.loader.name == "qlora"
    assert [a.name for a in run.actions][:1] == ["save"]
    assert any(Path(o.path) == tmp_path / "out" for o in run.outputs)
    assert not (tmp_path / "work").exists()  # checked and probed, nothing created

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("a user's file")  # a folder airo did not write
    with pytest.raises(ConfigError, match="out"):
        plan(Run.start(_config(*_flags(tmp_path, tiny_model_dir))))


def test_find_resume_point_alone_picks_the_newest_complete_checkpoint(tmp_path, airo_env, tiny_model_dir):
    from airo.core.atomic import KIND_CHECKPOINT, stamp
    from airo.core.training.checkpoints import CHECKPOINT_MARKER, options_snapshot
    from airo.core.training.recipe import find_resume_point
    from airo.core.training.run import Run

    config = _config(*_flags(tmp_path, tiny_model_dir))
    for step, marked in ((2, True), (4, True), (6, False)):
        folder = tmp_path / "work" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        stamp(folder, KIND_CHECKPOINT)
        if marked:
            (folder / CHECKPOINT_MARKER).write_text(json.dumps({"global_step": step,
                                                                "config": options_snapshot(config)}))
    run = Run.start(config)
    find_resume_point(run)
    assert run.resume == tmp_path / "work" / "checkpoint-4"
    assert run.incomplete == [tmp_path / "work" / "checkpoint-6"]


def _prepared_run(tmp_path, model, *extra):
    """A Run as the stages up to prepare_data leave it (no model loaded)."""
    from airo.core.training.recipe import STAGES
    from airo.core.training.run import Run

    run = Run.start(_config(*_flags(tmp_path, model, *extra)))
    names = _stage_names()
    for stage in STAGES[:names.index("prepare_data") + 1]:
        stage(run)
    return run


def test_the_stages_up_to_prepare_data_read_the_data_and_load_no_model(tmp_path, airo_env, tiny_model_dir,
                                                                          monkeypatch):
    import transformers

    def refuse(*_args, **_kwargs):
        raise AssertionError("a stage before load_model loaded the model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    run = _prepared_run(tmp_path, tiny_model_dir)
    assert run.main and not run.stopped and run.args is not None
    assert type(run.distributed).__name__ == "DataParallel"
    assert run.data_record["train_examples"] == len(run.prepared.train) > 0
    assert run.data_record["processes"] == 1
    assert (tmp_path / "work").is_dir()  # claimed


def test_record_completion_alone_is_what_check_finished_reads_back(tmp_path, airo_env, tiny_model_dir):
    """The record the last stage writes makes the same command stop at check_finished, with
    the same step, outputs and loss; nothing before it needs to run."""
    from airo.core.training.context import TrainResult
    from airo.core.training.recipe import check_finished, record_completion
    from airo.core.training.run import Run

    config = _config(*_flags(tmp_path, tiny_model_dir))
    (tmp_path / "work").mkdir()
    run = Run.start(config)
    run.trainer = SimpleNamespace(state=SimpleNamespace(global_step=7))
    run.args = SimpleNamespace(save_strategy="steps")
    run.marker = SimpleNamespace(identity=None)
    run.metrics = {"train_runtime": 1.0}
    run.result = TrainResult(output_dir=str(tmp_path / "out"), working_dir=str(tmp_path / "work"), global_step=7,
                             outputs={"adapter": str(tmp_path / "out")}, actions=["save"], final_loss=1.5)
    record_completion(run)

    again = Run.start(config)
    check_finished(again)
    assert again.stopped and again.result.already_complete
    assert (again.result.global_step, again.result.final_loss) == (7, 1.5)
    assert again.result.outputs == {"adapter": str(tmp_path / "out")}


def test_run_actions_alone_hands_the_gathered_weights_and_runs_only_on_rank_0(tmp_path, airo_env, tiny_model_dir):
    from airo.core.training.recipe import run_actions
    from airo.core.training.run import Run

    seen = []
    action = SimpleNamespace(name="probe", run=lambda ctx: (seen.append(ctx), ctx.outputs.update(probe="x")))
    loaded = SimpleNamespace(is_peft=True, quantized_bits=None, info={}, model=None)
    prepared = SimpleNamespace(template=None, report=None, format_name="f", template_name="t")

    def make(main):
        run = Run.start(_config(*_flags(tmp_path, tiny_model_dir)))
        run.main = main
        run.trainer = SimpleNamespace(state=SimpleNamespace(global_step=3, log_history=[{"loss": 2.0}]), model="m")
        run.loaded, run.prepared, run.actions = loaded, prepared, [action]
        run.loader = SimpleNamespace(name="qlora")
        run.args = SimpleNamespace(bf16=False, fp16=False)
        run.plugin_loop = SimpleNamespace(summary_lines=lambda: ["eval: ok"])
        run.state_dict = {"w": 1}
        return run

    worker = make(main=False)
    run_actions(worker)
    assert not seen and worker.result.global_step == 3 and not worker.result.is_main_process
    main = make(main=True)
    run_actions(main)
    (ctx,) = seen
    assert ctx.state_dict == {"w": 1} and ctx.model == "m" and ctx.info["global_step"] == 3
    assert main.result.outputs == {"probe": "x"} and main.result.final_loss == 2.0
    assert main.result.notes[-1] == "eval: ok"


def test_gather_weights_alone_asks_the_backend(tmp_path, airo_env, tiny_model_dir):
    from airo.core.training.distributed import DataParallel, DeepSpeed
    from airo.core.training.recipe import gather_weights
    from airo.core.training.run import Run

    run = Run.start(_config(*_flags(tmp_path, tiny_model_dir)))
    plugin = SimpleNamespace(zero_stage=3)
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin),
                                  get_state_dict=lambda engine: {"gathered": engine})
    run.trainer = SimpleNamespace(is_deepspeed_enabled=True, accelerator=accelerator, deepspeed="engine")
    run.distributed = DataParallel()
    gather_weights(run)
    assert run.state_dict is None  # every rank holds the whole model
    run.distributed = DeepSpeed({"deepspeed": "zero3.json"})
    gather_weights(run)
    assert run.state_dict == {"gathered": "engine"}
    plugin.zero_stage = 2
    gather_weights(run)
    assert run.state_dict is None  # ZeRO-2 shards the optimizer, not the weights


# -- the whole run is its stages -------------------------------------------------------------

def test_run_training_calls_the_stages_in_order_and_a_finished_run_stops_at_check_finished(
        tmp_path, airo_env, tiny_model_dir, monkeypatch):
    from airo.core.training import recipe

    called, names = [], _stage_names()

    def spy(stage):
        def wrapped(run):
            called.append(stage.__name__)
            return stage(run)
        return wrapped

    monkeypatch.setattr(recipe, "STAGES", tuple(spy(s) for s in recipe.STAGES))
    config = _config(*_flags(tmp_path, tiny_model_dir))
    result = recipe.run_training(config)
    assert called == names
    assert result.global_step == 2 and not result.already_complete
    assert json.loads((tmp_path / "work" / "completed").read_text())["global_step"] == 2

    called.clear()
    again = recipe.run_training(_config(*_flags(tmp_path, tiny_model_dir)))
    assert again.already_complete and again.global_step == 2
    assert called == names[:names.index("check_finished") + 1]
