"""The training run: helpers (collator, resume discovery, actions, optimizer), the seed's
QLoRA command end to end with a merge, kill-and-resume, and the README demo."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, REPO, run_cli

CONVERSATIONS = EXAMPLES / "data" / "conversations.json"


def _config(*argv):
    from airo.core.config import build_config

    return build_config(None, list(map(str, argv)))


# -- helpers ------------------------------------------------------------------------------------

def test_padding_collator():
    import torch

    from airo.core.data.collator import PaddingCollator

    batch = PaddingCollator(pad_token_id=0)([
        {"input_ids": [1, 5, 6, 2], "labels": [-100, -100, 6, 2]},
        {"input_ids": [1, 7], "labels": [-100, 7]},
    ])
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 2], [-100, 7, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    padded = PaddingCollator(pad_token_id=0, pad_to_multiple_of=8)([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])
    assert padded["input_ids"].shape == (1, 8)
    assert all(t.dtype == torch.long for t in padded.values())
    unlabelled = PaddingCollator(pad_token_id=9)([{"input_ids": [4]}, {"input_ids": [5, 6], "labels": None}])
    assert unlabelled["labels"].tolist() == [[4, -100], [5, 6]]
    assert unlabelled["input_ids"].tolist() == [[4, 9], [5, 6]]
    with pytest.raises(ValueError, match="as long as"):
        PaddingCollator(pad_token_id=0)([{"input_ids": [1, 2], "labels": [1]}])


def test_find_resume_checkpoint(tmp_path):
    from airo.core.atomic import stamp
    from airo.core.training import CHECKPOINT_MARKER, find_resume_checkpoint

    assert find_resume_checkpoint(tmp_path / "missing") == (None, [])
    for step, marker in ((5, {"global_step": 5}), (10, {"global_step": 10}), (15, None), (20, None),
                         (25, "not json"), (30, {"no": "step"})):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        stamp(d, "checkpoint")  # airo stamps a checkpoint folder before the Trainer writes it
        if marker is not None:
            (d / CHECKPOINT_MARKER).write_text(marker if isinstance(marker, str) else json.dumps(marker))
    (tmp_path / "checkpoint-x").mkdir()
    best, incomplete = find_resume_checkpoint(tmp_path)
    assert best.name == "checkpoint-10"
    # an unreadable marker, or one without a step, means "not complete", never "complete"
    assert [p.name for p in incomplete] == ["checkpoint-15", "checkpoint-20", "checkpoint-25", "checkpoint-30"]


def test_find_resume_checkpoint_never_takes_foreign_checkpoints(tmp_path):
    """checkpoint-N folders that airo never marked: an error that explains, nothing deleted."""
    from airo.core.atomic import OWNER_STAMP, stamp
    from airo.core.errors import ConfigError
    from airo.core.training import find_resume_checkpoint, run_training

    work = tmp_path / "work"
    for step in (3, 6):
        (work / f"checkpoint-{step}").mkdir(parents=True)
        (work / f"checkpoint-{step}" / "model.safetensors").write_text("someone else's")
    with pytest.raises(ConfigError, match=r"\(checkpoint-3, checkpoint-6\) that airo did not write.*new --working_dir"):
        find_resume_checkpoint(work)
    config = _config("--model_name_or_path", "no-such-model", "--output_dir", tmp_path / "out",
                     "--working_dir", work, "--dataset", "no-such-file.json")
    with pytest.raises(ConfigError, match="working dir .* holds files airo did not write"):
        run_training(config)  # before loading anything: the folder is not airo's
    stamp(work, "working dir")  # even in airo's own working dir, someone else's checkpoints stay untouched
    with pytest.raises(ConfigError, match="checkpoint-3, checkpoint-6.*did not write"):
        run_training(config)
    assert sorted(p.name for p in work.iterdir()) == [OWNER_STAMP, "checkpoint-3", "checkpoint-6"]
    assert (work / "checkpoint-6" / "model.safetensors").is_file()


def test_rotate_checkpoints_counts_only_complete_ones(tmp_path):
    """--save_total_limit keeps the newest N *complete* checkpoints: a checkpoint saved but not
    yet marked (a kill between the two) never pushes the last complete one out."""
    from airo.core.training import CHECKPOINT_MARKER, rotate_checkpoints

    def make(step, complete):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / CHECKPOINT_MARKER).write_text(json.dumps({"global_step": step}))
        return d

    make(2, False)  # not airo's (or half-written long ago): never touched
    five, ten = make(5, True), make(10, True)
    make(15, False)  # saved, marker not written yet
    assert rotate_checkpoints(tmp_path, 2) == []
    assert rotate_checkpoints(tmp_path, None) == [] and rotate_checkpoints(tmp_path, 0) == []
    assert rotate_checkpoints(tmp_path, 1, keep=[ten]) == [five]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-15", "checkpoint-2"]
    # the one just marked and the best one are never deleted
    twenty = make(20, True)
    assert rotate_checkpoints(tmp_path, 1, keep=[twenty, ten]) == []
    assert rotate_checkpoints(tmp_path, 1, keep=[twenty]) == [ten]


def test_trainer_rotation_is_off():
    """airo rotates after marking; the Trainer's own rotation (before the marker) is off."""
    from airo.core.training.arguments import training_overrides

    config = _config("--model_name_or_path", "m", "--output_dir", "o", "--save_total_limit", "2")
    assert config.training_arguments(**training_overrides(config)).save_total_limit is None
    assert config.training["save_total_limit"] == 2


def _marked_checkpoint(work: Path, step: int, config) -> Path:
    from airo.core.atomic import stamp
    from airo.core.training import CHECKPOINT_MARKER

    d = work / f"checkpoint-{step}"
    d.mkdir(parents=True)
    stamp(work, "working dir")
    (d / CHECKPOINT_MARKER).write_text(json.dumps({"global_step": step, "config": config.to_dict()}, default=str))
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def test_resume_refuses_changed_options(tmp_path):
    from airo.core.errors import ConfigError
    from airo.core.training import check_resume_options, run_training

    base = ["--model_name_or_path", "no-such-model", "--dataset", "no-such-file.json", "--output_dir",
            tmp_path / "out", "--lora_r", "8", "--num_train_epochs", "1"]
    checkpoint = _marked_checkpoint(tmp_path / "out-checkpoints", 4, _config(*base))
    # options that do not change what is computed may change
    check_resume_options(checkpoint, _config(*base, "--num_train_epochs", "3", "--max_steps", "9",
                                             "--logging_steps", "1", "--save_steps", "2", "--save_total_limit", "1",
                                             "--eval_steps", "3", "--report_to", "wandb", "--dataloader_num_workers",
                                             "2", "--post_train_actions", "none", "--merged_output_dir",
                                             tmp_path / "merged", "--gradient_checkpointing"))
    # an option set to its default is no change
    check_resume_options(checkpoint, _config(*base, "--adam_beta1", "0.9", "--bits", "4"))
    for flags, names in ((["--lora_r", "16"], "lora_r"), (["--learning_rate", "1e-3"], "learning_rate"),
                         (["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"],
                          "gradient_accumulation_steps.*per_device_train_batch_size"),
                         (["--dataset_format", "sharegpt"], "dataset_format"), (["--bits", "16"], "bits")):
        with pytest.raises(ConfigError, match=f"{names}.*new --working_dir"):
            check_resume_options(checkpoint, _config(*base, *flags))
    with pytest.raises(ConfigError, match=r"lora_r \(8 -> 16\)"):
        run_training(_config(*base, "--lora_r", "16"))  # before loading anything
    # checkpoints from before options were recorded resume as they are
    (checkpoint / "airo-checkpoint-complete.json").write_text(json.dumps({"global_step": 4}))
    check_resume_options(checkpoint, _config(*base, "--lora_r", "16"))


def test_overlapping_folders_are_refused(tmp_path):
    from airo.core.errors import ConfigError
    from airo.core.training import check_folders, run_training, select_actions
    from airo.core.training.recipe import declared_outputs

    def config(*flags):
        return _config("--model_name_or_path", "no-such-model", "--dataset", "no-such-file.json", *flags)

    def check(config):  # the folders the chosen actions declare, as the run checks them
        check_folders(config, declared_outputs(config, select_actions(config)))

    out, work, merged = tmp_path / "out", tmp_path / "work", tmp_path / "merged"
    bad = [
        (["--output_dir", out, "--working_dir", work, "--merged_output_dir", out], "same folder"),
        (["--output_dir", out, "--working_dir", merged / "work", "--merged_output_dir", merged],
         "--working_dir .* is inside --merged_output_dir"),
        (["--output_dir", out, "--working_dir", work, "--merged_output_dir", out / "merged"], "is inside --output_dir"),
        (["--output_dir", work / "final", "--working_dir", work], "--output_dir .* is inside --working_dir"),
        (["--output_dir", tmp_path, "--working_dir", work, "--model_name_or_path", tmp_path], "same folder"),
    ]
    tmp_path.joinpath("config.json").write_text("{}")  # a base model folder
    for flags, message in bad:
        with pytest.raises(ConfigError, match=message):
            check(config(*flags))
    with pytest.raises(ConfigError, match="same folder"):
        run_training(config(*bad[0][0]))
    # the working dir inside (or equal to) the output dir is supported
    check(config("--output_dir", out, "--working_dir", out / "checkpoints", "--merged_output_dir", merged))
    check(config("--output_dir", out, "--working_dir", out))
    # a user's folder as --output_dir: refused before training, left as it is
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="will not touch"):
        run_training(config("--output_dir", mine, "--working_dir", work))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    check_folders(config("--output_dir", mine, "--working_dir", work), [])  # nothing will be written there


def test_reports_to_wandb_through_all():
    from airo.core.training.arguments import reports_to

    base = ["--model_name_or_path", "m", "--output_dir", "o"]
    assert reports_to(_config(*base, "--report_to", "wandb"), "wandb")
    assert reports_to(_config(*base, "--report_to", "all"), "wandb")
    assert reports_to(_config(*base, "--report_to", "tensorboard,wandb"), "wandb")
    assert not reports_to(_config(*base, "--report_to", "tensorboard"), "wandb")
    assert not reports_to(_config(*base), "wandb")


def test_training_info_records_an_absolute_base_path(tmp_path, monkeypatch, tiny_model_dir):
    from types import SimpleNamespace

    from airo.core.training.summary import training_info

    monkeypatch.chdir(Path(tiny_model_dir).parent)
    config = _config("--model_name_or_path", Path(tiny_model_dir).name, "--output_dir", tmp_path / "o")
    loaded = SimpleNamespace(is_peft=True, quantized_bits=None, model=None, info={})
    prepared = SimpleNamespace(format_name="airoboros", template_name="vicuna")
    args = SimpleNamespace(bf16=False, fp16=False)
    info = training_info(config, loaded, prepared, "qlora", args)
    assert info["base_model"] == str(Path(tiny_model_dir).resolve())
    hub = _config("--model_name_or_path", "org/some-model", "--output_dir", tmp_path / "o")
    assert training_info(hub, loaded, prepared, "qlora", args)["base_model"] == "org/some-model"


def test_select_actions(airo_env, airo_plugin):
    from airo.core import hookimpl
    from airo.core.errors import ConfigError
    from airo.core.training import select_actions

    base = ["--model_name_or_path", "m", "--output_dir", "o"]
    assert [a.name for a in select_actions(_config(*base))] == ["save"]
    assert [a.name for a in select_actions(_config(*base, "--merged_output_dir", "m2"))] == ["save", "merge"]
    assert select_actions(_config(*base, "--post_train_actions", "none")) == []
    assert [a.name for a in select_actions(_config(*base, "--post_train_actions", "merge,save"))] == ["save", "merge"]

    class Upload:
        @hookimpl
        def register_post_train_actions(self, register):
            register("upload", lambda ctx: None, order=300, description="test upload")

    airo_plugin(Upload(), name="upload-plugin")
    names = [a.name for a in select_actions(_config(*base, "--post_train_actions", "auto,upload"))]
    assert names == ["save", "upload"]
    # a misspelt action is refused with the config, naming the flag, before anything runs
    with pytest.raises(ConfigError, match="--post_train_actions: unknown post-training action 'merg'. "
                                          "Did you mean 'merge'"):
        select_actions(_config(*base, "--post_train_actions", "merg"))


def test_resolve_optim(monkeypatch):
    """--optim auto: the seed's paged optimizer for an adapter on a 4/8-bit base on CUDA, decided
    from what the loader loaded (the core knows no loader's options)."""
    from types import SimpleNamespace

    import torch

    from airo.core.training.arguments import resolve_optim

    base = _config("--model_name_or_path", "m", "--output_dir", "o")

    def loaded(peft, bits):
        return SimpleNamespace(is_peft=peft, quantized_bits=bits)

    assert resolve_optim(base, loaded(True, 4)) is None  # no CUDA: TrainingArguments' adamw_torch
    assert base.training_arguments().optim == "adamw_torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_optim(base, loaded(True, 4)) == "paged_adamw_32bit"
    assert resolve_optim(base, loaded(True, 8)) == "paged_adamw_32bit"
    assert resolve_optim(base, loaded(True, None)) is None
    assert resolve_optim(base, loaded(False, None)) is None
    assert resolve_optim(_config("--model_name_or_path", "m", "--output_dir", "o", "--optim", "adafactor"),
                         loaded(True, 4)) is None


def test_select_loader_asks_the_loaders(airo_env, airo_plugin, monkeypatch):
    """--loader auto picks the one loader whose auto(config) says it applies; none or several is
    a clear error. The core names no loader."""
    from airo.core import LoadedModel, hookimpl
    from airo.core.errors import ConfigError
    from airo.core.training import select_loader

    base = ["--model_name_or_path", "m", "--output_dir", "o"]
    assert select_loader(_config(*base)).name == "qlora"
    assert select_loader(_config(*base, "--full_finetune")).name == "full"

    class Greedy:
        @hookimpl
        def register_model_loaders(self, register):
            register("greedy", lambda config: LoadedModel(None, None), auto=lambda config: True)

    airo_plugin(Greedy(), name="greedy-plugin")
    with pytest.raises(ConfigError, match=r"several model loaders apply to this config \(greedy, qlora\)"):
        select_loader(_config(*base))
    assert select_loader(_config(*base, "--loader", "qlora")).name == "qlora"
    monkeypatch.setenv("AIRO_DISABLE_PLUGINS", "loaders,greedy-plugin")
    from airo.core.plugins import reset_plugin_manager

    reset_plugin_manager()
    with pytest.raises(ConfigError, match="no model loader applies to this config.*Loaders: none"):
        select_loader(_config(*base))


def test_training_arguments_from_seed_flags(tmp_path):
    from airo.core.training.arguments import training_overrides

    config = _config("--model_name_or_path", "m", "--output_dir", tmp_path / "out", "--evaluation_strategy", "steps",
                     "--eval_steps", "5", "--gradient_checkpointing", "--bf16", "--ddp_find_unused_parameters", "False")
    args = config.training_arguments(**training_overrides(config))
    assert args.output_dir == str(tmp_path / "out") + "-checkpoints"
    assert args.eval_strategy == "steps" and args.eval_steps == 5
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.optim == "adamw_torch" and args.bf16 and args.use_cpu
    assert args.neftune_noise_alpha == 5.0 and args.ddp_find_unused_parameters is False
    assert args.include_num_input_tokens_seen == "non_padding"
    off = _config("--model_name_or_path", "m", "--output_dir", "o", "--neftune_noise_alpha", "0")
    assert off.training_arguments(**training_overrides(off)).neftune_noise_alpha is None


def test_atomic_directory(tmp_path):
    from airo.core.atomic import atomic_directory

    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text("1")
    assert (target / "config.json").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "config.json").write_text("half")
            raise RuntimeError("crash while saving")
    assert (target / "config.json").read_text() == "1"  # the old output is intact
    with atomic_directory(target) as tmp:
        (tmp / "adapter_config.json").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [".airo-owned", "adapter_config.json"]
    # keep_existing (working dir inside the output dir): files move in, the working dir stays,
    # the previous output's other files go
    (target / "checkpoint-1").mkdir()
    with atomic_directory(target, keep_existing=True, preserve=(target / "checkpoint-1",)) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == [".airo-owned", "c.txt", "checkpoint-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_directory_never_replaces_a_users_folder(tmp_path):
    """A non-empty folder airo did not stamp is not airo's to delete, whatever it holds."""
    from airo.core.atomic import stamp
    from airo.core.errors import ConfigError
    from airo.core.atomic import atomic_directory

    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    (target / "config.json").write_text("{}")  # looks like a model: no proof of anything
    (target / "airo_training.json").write_text("{}")
    with pytest.raises(ConfigError, match="will not touch"):
        with atomic_directory(target) as tmp:
            (tmp / "config.json").write_text("{}")
    assert (target / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    # an empty folder, or one airo stamped (an earlier output), is replaced
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as tmp:
        (tmp / "config.json").write_text("{}")
    (target / "thesis.tex").unlink()
    stamp(target, "output")
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == [".airo-owned", "config.json"]
    # a file in the way is a clear error, not an OSError after the work is done
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        with atomic_directory(tmp_path / "afile" / "out"):
            pass


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_atomic_directory_removes_stale_temp_folders(tmp_path):
    from airo.core.atomic import atomic_directory

    dead, alive = _dead_pid(), os.getppid()
    for name in (f".out.airo-tmp-{dead}", f".out.airo-old-{dead}", f".out.airo-tmp-{alive}", f".other.airo-tmp-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("x")
        (tmp_path / name / ".airo-owned").write_text("{}")  # they came from atomic_directory
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "config.json").write_text("{}")
    # the dead process's leftovers for this target are gone; a live writer's and other targets' stay
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.airo-tmp-{dead}", f".out.airo-tmp-{alive}", "out"]
    assert (tmp_path / "out" / "config.json").is_file()


def test_atomic_directory_restores_output_lost_between_renames(tmp_path):
    """A crash after the old output was moved aside and before the new one moved in."""
    from airo.core.atomic import atomic_directory

    old = tmp_path / f".out.airo-old-{_dead_pid()}"
    old.mkdir()
    (old / "config.json").write_text("previous")
    (old / ".airo-owned").write_text("{}")
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out"):
            raise RuntimeError("this write fails too")
    assert (tmp_path / "out" / "config.json").read_text() == "previous"


def test_completed_run_is_not_repeated(tmp_path, capsys):
    from airo.core.training import COMPLETED_FILE, run_training

    from airo.core.atomic import stamp

    work = tmp_path / "work"
    work.mkdir()
    stamp(work, "working dir")
    (work / COMPLETED_FILE).write_text(json.dumps({"global_step": 42, "outputs": {"adapter": "x"}}))
    config = _config("--model_name_or_path", "no-such-model", "--output_dir", tmp_path / "out",
                     "--working_dir", work, "--dataset", "no-such-file.json")
    result = run_training(config)  # would fail loudly if it tried to load anything
    assert result.already_complete and result.global_step == 42
    text = result.summary()
    assert "already complete" in text and str(work / COMPLETED_FILE) in text and "adapter: x" in text
    assert "options differ" not in text
    # deleting the marker would only redo the post-training actions: the hint says how to train again
    assert "delete it to train again" not in text
    assert f"to train again, use a new --working_dir or remove {work}" in text
    # the marker remembers the options: a changed command is an error pointing at a new working dir
    (work / COMPLETED_FILE).write_text(json.dumps({"global_step": 42, "config": config.to_dict() | {"lora_r": 8}},
                                                  default=str))
    from airo.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"already complete \(step 42.*differs from it: options: lora_r \(8 -> "
                                          r"64\).*use a new --working_dir"):
        run_training(config)


# -- end to end ----------------------------------------------------------------------------------

def seed_qlora_flags(base_model, root: Path, *, dataset=CONVERSATIONS) -> list[str]:
    """The seed README's QLoRA command: paths swapped, sizes shrunk, every other flag kept."""
    return [
        "--model_name_or_path", base_model,
        "--working_dir", root / "checkpoints",
        "--output_dir", root / "peft",
        "--merged_output_dir", root / "merged",
        "--num_train_epochs", "1",           # seed: 5
        "--logging_steps", "1",
        "--save_strategy", "steps",
        "--save_steps", "5",                 # seed: 75
        "--save_total_limit", "3",
        "--data_seed", "11422",
        "--evaluation_strategy", "steps",
        "--per_device_eval_batch_size", "2",
        "--eval_dataset_size", "0.1",        # seed: 0.01 (of ~60 records that is 1, often too long for 128 tokens)
        "--eval_steps", "5",                 # seed: 75
        "--max_new_tokens", "4096",
        "--dataloader_num_workers", "3",
        "--logging_strategy", "steps",
        "--do_train",
        "--lora_r", "64",
        "--lora_alpha", "16",
        "--lora_modules", "all",
        "--bf16",
        "--bits", "4",
        "--double_quant",
        "--quant_type", "nf4",
        "--lr_scheduler_type", "constant",
        "--dataset", dataset,
        "--dataset_format", "airoboros_chat",
        "--model_max_len", "128",            # seed: 4096
        "--per_device_train_batch_size", "2",
        "--learning_rate", "0.00008",
        "--adam_beta2", "0.999",
        "--max_grad_norm", "0.3",
        "--lora_dropout", "0.0",
        "--weight_decay", "0.0",
        "--seed", "11422",
        "--report_to", "wandb",              # WANDB_MODE=offline in tests
        "--gradient_checkpointing",
        "--use_flash_attention_2",           # no flash-attn / no GPU here: must fall back to sdpa
        "--ddp_find_unused_parameters", "False",
    ]


@pytest.mark.slow
def test_seed_qlora_command(tiny_model_dir, tmp_path, airo_env):
    import bitsandbytes as bnb
    import torch
    from bitsandbytes import functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    # One more step per example than the seed's default accumulation (16) would give, and a
    # learning rate that makes the adapter matter for the logit comparison below.
    flags = seed_qlora_flags(tiny_model_dir, tmp_path) + ["--gradient_accumulation_steps", "1",
                                                          "--learning_rate", "0.01"]
    started = time.time()
    proc = run_cli("train", *flags)
    elapsed = time.time() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    print(f"seed QLoRA command: {elapsed:.1f}s")
    # compatibility messages and the run summary
    assert "--do_train is accepted for compatibility and ignored" in proc.stderr
    assert "flash_attention_2 was requested but" in out and "using sdpa" in out
    assert "loader:           qlora (LoRA adapter, 4-bit base, bf16)" in out
    assert "NEFTune:          on, noise alpha 5" in out
    for field in ("trainable params:", "examples:", "tokens:", "steps:", "batch:", "format/template:  airoboros_chat"):
        assert field in out, field
    # not a terminal: no progress bar redraws, the step lines carry tokens/s instead
    assert "eval_loss " in out and "train_tokens_per_second" in out and "it/s]" not in proc.stderr
    # a quiet console: numbers as numbers, no library deprecation noise, no nested eval bars
    assert "{'loss': '" not in out and re.search(r"step \d+: loss \d", out)
    for noise in ("is_gradient_checkpointing", "Setting ds_accelerator", "pip install kernels", "Saving the dataset"):
        assert noise not in proc.stderr + out, noise
    assert f"airo chat {tmp_path / 'merged'}" in out  # what to do next
    assert "merge: dequantize path" in out
    assert f"merged model: {tmp_path / 'merged'}" in out and f"adapter: {tmp_path / 'peft'}" in out
    assert (tmp_path / "checkpoints" / "wandb").is_dir()  # wandb ran (offline) inside the working dir

    # the adapter and what it was trained on: real bitsandbytes 4-bit layers
    peft_dir = tmp_path / "peft"
    info = json.loads((peft_dir / "airo_training.json").read_text())
    assert info["bits"] == 4 and info["quant_type"] == "nf4" and info["double_quant"] is True
    assert len(info["quantized_modules"]) == 14 and not any("lm_head" in m for m in info["quantized_modules"])
    adapter_config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == 64 and adapter_config["lora_alpha"] == 16
    assert sorted(adapter_config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                         "up_proj", "v_proj"]
    report = json.loads((peft_dir / "data_report.json").read_text())
    assert report["format"] == "airoboros_chat" and report["examples"]["train"] > 10
    assert AutoTokenizer.from_pretrained(peft_dir).chat_template
    state = json.loads(next((tmp_path / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["global_step"] > 0
    completed = json.loads((tmp_path / "checkpoints" / "completed").read_text())
    assert completed["outputs"]["merged model"] == str(tmp_path / "merged")

    # the hour after training: a metrics log with every logged step, the loss plot, model cards
    from huggingface_hub import ModelCard

    metrics = [json.loads(line) for line in (tmp_path / "checkpoints" / "metrics.jsonl").read_text().splitlines()]
    final = max((tmp_path / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    logged = [e["step"] for e in json.loads((final / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [m["step"] for m in metrics if "loss" in m] == logged and isinstance(metrics[0]["loss"], float)
    assert any("eval_loss" in m for m in metrics)
    assert (peft_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = ModelCard.load(peft_dir / "README.md")
    assert card.data.library_name == "peft" and "qlora" in card.data.tags
    for needle in ("[More Information Needed]",):
        assert needle not in card.text
    for needle in ("airoboros_chat", "conversations.json", info["data"]["content_hash"][:12], "airo chat", "r 64"):
        assert needle in card.text, needle
    merged_card = ModelCard.load(tmp_path / "merged" / "README.md")
    assert merged_card.data.library_name == "transformers" and "dequantize" in merged_card.text

    # the merged model: plain transformers, no quantization_config, chat template beside it
    merged_dir = tmp_path / "merged"
    assert "quantization_config" not in json.loads((merged_dir / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert merged.dtype == torch.bfloat16  # the run's --bf16
    tok = AutoTokenizer.from_pretrained(merged_dir)
    assert tok.chat_template and tok.pad_token == "<unk>"

    # reference: the PEFT model on the base exactly as training saw it (bitsandbytes' own
    # 4-bit layers, dequantized by bitsandbytes), computed in fp32
    quantized = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16,
                                                     quantization_config=BitsAndBytesConfig(
                                                         load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                         bnb_4bit_use_double_quant=True,
                                                         bnb_4bit_compute_dtype=torch.bfloat16))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            base.get_submodule(name).weight.data = F.dequantize_4bit(module.weight.data,
                                                                     module.weight.quant_state).float()
    x = torch.randint(3, 590, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = base(input_ids=x).logits.float()
        reference = PeftModel.from_pretrained(base, str(peft_dir)).eval()(input_ids=x).logits.float()
        got = merged(input_ids=x).logits.float()
    diff = (got - reference).abs().max().item()
    effect = (reference - base_logits).abs().max().item()
    scale = reference.abs().max().item()
    print(f"merged (bf16) vs PEFT on dequantized 4-bit base (fp32): max |logit diff| {diff:.3e}; "
          f"adapter effect {effect:.3e}; max |logit| {scale:.3f}")
    assert diff < 2e-2 * scale     # bf16 weights: ~0.5% of the logit scale observed
    assert effect > 5 * diff       # the adapter changed the model well beyond the tolerance


def _resume_flags(model, root: Path) -> list[str]:
    return ["--model_name_or_path", model, "--output_dir", root / "peft", "--dataset", CONVERSATIONS,
            "--dataset_format", "airoboros_chat", "--model_max_len", "128", "--num_train_epochs", "2",
            "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--save_steps", "4",
            "--logging_steps", "1", "--learning_rate", "1e-3", "--lr_scheduler_type", "cosine", "--bits", "4",
            "--lora_r", "8", "--eval_dataset_size", "0", "--save_total_limit", "2"]


@pytest.mark.slow
def test_kill_and_resume(tiny_model_dir, tmp_path, airo_env):
    """SIGKILL after a checkpoint; the same command resumes there (optimizer, scheduler, RNG and
    data position included: the result is bit-identical to an uninterrupted run); a third run
    sees the completed marker and does nothing."""
    from safetensors.torch import load_file

    from airo.core.training import CHECKPOINT_MARKER, find_resume_checkpoint

    # 1. uninterrupted reference
    ref = run_cli("train", *_resume_flags(tiny_model_dir, tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    total = json.loads((tmp_path / "ref" / "peft-checkpoints" / "completed").read_text())["global_step"]

    # 2. the same run, killed after its first complete checkpoint
    root = tmp_path / "run"
    work = root / "peft-checkpoints"
    cmd = [sys.executable, "-m", "airo.core", "train", *map(str, _resume_flags(tiny_model_dir, root))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if list(work.glob(f"checkpoint-*/{CHECKPOINT_MARKER}")):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    newest, _ = find_resume_checkpoint(work)
    killed_at = json.loads((newest / CHECKPOINT_MARKER).read_text())["global_step"]
    assert killed_at < total and not (work / "completed").exists()
    assert not (root / "peft").exists()  # nothing final was written

    # a checkpoint the kill interrupted mid-save (no marker) must not be resumed from
    partial = work / f"checkpoint-{killed_at + 1}"
    partial.mkdir(exist_ok=True)
    if not (partial / ".airo-owned").is_file():  # the kill may have come before the save began
        from airo.core.atomic import stamp

        stamp(partial, "checkpoint")  # as airo stamps a checkpoint before the Trainer writes it
    (partial / "adapter_model.safetensors").write_bytes(b"truncated")

    # 3. re-run the same command: it resumes at the saved step
    again = run_cli("train", *_resume_flags(tiny_model_dir, root))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "which is no longer running; taking it over" in again.stderr  # the killed run's lock
    assert f"removing incomplete checkpoint(s) left by an interrupted save: {partial.name}" in again.stdout
    assert not partial.exists()
    assert f"resuming from {work / f'checkpoint-{killed_at}'} (step {killed_at} of {total})" in again.stdout
    logged = len(re.findall(r"step \d+: loss ", again.stdout))
    assert logged == total - killed_at  # one log line per step after the checkpoint, none before
    # metrics.jsonl: one line per logged step across the kill and the resume, none twice
    metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, total + 1))
    final_state = json.loads((work / f"checkpoint-{total}" / "trainer_state.json").read_text())
    assert final_state["global_step"] == total
    assert [e["step"] for e in final_state["log_history"] if "loss" in e] == list(range(1, total + 1))
    print(f"killed at step {killed_at} of {total}; resumed there")

    # the resumed result equals the uninterrupted one
    a = load_file(tmp_path / "ref" / "peft" / "adapter_model.safetensors")
    b = load_file(root / "peft" / "adapter_model.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"resumed vs uninterrupted adapter: max |diff| = {worst:.3e}")
    assert worst <= 1e-6

    # 4. a third run finds the completed marker and exits 0 without training
    third = run_cli("train", *_resume_flags(tiny_model_dir, root))
    assert third.returncode == 0
    assert "already complete" in third.stdout and not re.search(r"step \d+: loss ", third.stdout)
    assert "Loading weights" not in third.stderr


@pytest.mark.slow
def test_readme_demo(tmp_path, airo_env):
    """`airo train examples/demo.yaml` (outputs redirected to a temp dir) on the shipped model and data."""
    runs = tmp_path / "runs"
    started = time.time()
    proc = run_cli("train", "examples/demo.yaml", "--output_dir", runs / "demo-adapter",
                   "--working_dir", runs / "demo-checkpoints", "--merged_output_dir", runs / "demo-merged",
                   cwd=REPO)
    elapsed = time.time() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"demo: {elapsed:.1f}s")
    assert elapsed < 180
    out = proc.stdout
    assert f"adapter: {runs / 'demo-adapter'}" in out and f"merged model: {runs / 'demo-merged'}" in out
    assert f"checkpoints and logs: {runs / 'demo-checkpoints'}" in out
    assert (runs / "demo-merged" / "model.safetensors").is_file()
    assert (runs / "demo-adapter" / "adapter_model.safetensors").is_file()
    # the demo names its base relatively; the adapter must load from any folder
    adapter_config = json.loads((runs / "demo-adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((REPO / "examples" / "tiny-llama").resolve())
    losses = [float(m.group(1)) for m in re.finditer(r"step \d+: loss ([0-9.eE+-]+)", out)]
    assert losses and losses[-1] < losses[0]  # it learned something


def test_a_relative_local_base_is_saved_absolute(tmp_path, monkeypatch):
    """adapter_config.json records a relative local base absolute (from another folder, peft
    took the relative path for a Hub id); Hub ids and absolute paths stay as they are."""
    from types import SimpleNamespace

    from airo.plugins.actions import _absolute_base_paths

    (tmp_path / "models" / "base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    configs = {"default": SimpleNamespace(base_model_name_or_path="models/base"),
               "hub": SimpleNamespace(base_model_name_or_path="meta-llama/Llama-2-7b-hf"),
               "absolute": SimpleNamespace(base_model_name_or_path="/srv/models/x")}
    _absolute_base_paths(SimpleNamespace(peft_config=configs))
    assert configs["default"].base_model_name_or_path == str((tmp_path / "models" / "base").resolve())
    assert configs["hub"].base_model_name_or_path == "meta-llama/Llama-2-7b-hf"
    assert configs["absolute"].base_model_name_or_path == "/srv/models/x"


# -- checkpoint policy, in process (a few steps on 8 examples) -------------------------------------

def _small_flags(model, root: Path, *extra) -> list:
    return ["--model_name_or_path", model, "--output_dir", root / "out", "--dataset", CONVERSATIONS,
            "--dataset_format", "airoboros_chat", "--model_max_len", "128", "--max_train_samples", "8",
            "--eval_dataset_size", "0", "--num_train_epochs", "1", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--bits", "16", "--lora_r", "4", "--logging_steps", "1",
            "--report_to", "none", *extra]


def _train(model, root: Path, *extra):
    from airo.core.training import run_training

    return run_training(_config(*_small_flags(model, root, *extra)))


def _count_saves(monkeypatch) -> list[int]:
    from transformers import Trainer

    saved: list[int] = []
    original = Trainer._save_checkpoint

    def counted(self, model, trial):
        saved.append(self.state.global_step)
        return original(self, model, trial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", counted)
    return saved


@pytest.mark.slow
def test_save_strategy_epoch_saves_each_step_once(tiny_model_dir, tmp_path, airo_env, monkeypatch):
    from airo.core.training import CHECKPOINT_MARKER

    saved = _count_saves(monkeypatch)
    result = _train(tiny_model_dir, tmp_path, "--save_strategy", "epoch")
    assert result.global_step == 4
    assert saved == [4]  # the forced final save and the epoch's are the same checkpoint
    assert (tmp_path / "out-checkpoints" / "checkpoint-4" / CHECKPOINT_MARKER).is_file()


class _Killed(BaseException):
    """Stands in for SIGKILL inside the process."""


@pytest.mark.slow
def test_save_total_limit_never_drops_the_last_complete_checkpoint(tiny_model_dir, tmp_path, airo_env, monkeypatch):
    """Killed after checkpoint-4 was written but before its marker, with --save_total_limit 1:
    checkpoint-2 (the last complete one) must still be there to resume from."""
    import airo.core.training as training
    from airo.core.training import callbacks

    flags = ["--save_steps", "2", "--save_total_limit", "1"]
    work = tmp_path / "out-checkpoints"
    real_write = callbacks.write_json

    def dies_at_step_4(path, data):
        if path.name == training.CHECKPOINT_MARKER and path.parent.name == "checkpoint-4":
            raise _Killed()
        return real_write(path, data)

    monkeypatch.setattr(callbacks, "write_json", dies_at_step_4)
    with pytest.raises(_Killed):
        _train(tiny_model_dir, tmp_path, *flags)
    monkeypatch.setattr(callbacks, "write_json", real_write)
    assert training.find_resume_checkpoint(work) == (work / "checkpoint-2", [work / "checkpoint-4"])

    saved = _count_saves(monkeypatch)
    result = _train(tiny_model_dir, tmp_path, *flags)
    assert result.resumed_from == str(work / "checkpoint-2") and result.global_step == 4
    assert saved == [4]
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-4"]  # the limit, after marking


@pytest.mark.slow
def test_failing_action_with_save_strategy_no_keeps_the_training(tiny_model_dir, tmp_path, airo_env, airo_plugin,
                                                                  monkeypatch):
    """--save_strategy no and a post-training action that crashes: the re-run trains nothing,
    redoes the actions, then drops the final checkpoint the user did not ask for."""
    from airo.core import hookimpl
    from airo.core.training import CHECKPOINT_MARKER, read_completed

    class Upload:
        @hookimpl
        def register_post_train_actions(self, register):
            def upload(ctx):
                raise RuntimeError("the hub is down")

            register("upload", upload, order=300, description="test upload")

    airo_plugin(Upload(), name="upload-plugin")
    work = tmp_path / "out-checkpoints"
    from airo.core.errors import PluginError

    # the error names the plugin and the hook (no anonymous traceback)
    with pytest.raises(PluginError, match="plugin 'upload-plugin'.*action 'upload'.*RuntimeError: the hub is down"):
        _train(tiny_model_dir, tmp_path, "--save_strategy", "no", "--post_train_actions", "auto,upload")
    assert (work / "checkpoint-4" / CHECKPOINT_MARKER).is_file()
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()  # `save` ran before the crash

    saved = _count_saves(monkeypatch)
    result = _train(tiny_model_dir, tmp_path, "--save_strategy", "no")  # the actions may change
    assert result.resumed_from == str(work / "checkpoint-4") and result.global_step == 4 and saved == []
    done = read_completed(work)
    # nothing was trained in the re-run: no made-up train_loss 0.0, the last logged loss instead
    assert "train_loss" not in done["metrics"]
    assert done["final_loss"] is not None and done["final_loss"] > 0
    assert "0.0000" not in result.summary() and f"last logged loss {done['final_loss']:.4f}" in result.summary()
    assert not list(work.glob("checkpoint-*"))  # --save_strategy no: no checkpoint is left behind


@pytest.mark.slow
def test_full_finetune_fp16_keeps_fp32_weights(tiny_model_dir, tmp_path, airo_env):
    """--full_finetune --bits 16 --fp16: fp32 master weights under fp16 mixed precision (the
    seed's rule); fp16 weights trained to NaN. The summary says so, and no merge is promised."""
    import torch
    from safetensors.torch import load_file

    proc = run_cli("train", *_small_flags(tiny_model_dir, tmp_path, "--full_finetune", "--fp16", "--bits", "16",
                                          "--max_steps", "3", "--learning_rate", "1e-3",
                                          "--merged_output_dir", tmp_path / "merged"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "loader:           full (full fine-tune, fp32 weights, fp16 mixed precision)" in out
    assert "merged output:" not in out and "nothing will be merged: a full fine-tune has no adapter" in out
    losses = [float(m.group(1)) for m in re.finditer(r"step \d+: loss ([0-9.eE+-]+)", out)]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses), losses
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(before[k].float(), weights[k]) for k in before), "the weights were trained"
    assert not (tmp_path / "merged").exists()


def test_shipped_examples():
    config = json.loads((EXAMPLES / "tiny-llama" / "config.json").read_text())
    assert config["model_type"] == "llama"
    size = sum(p.stat().st_size for p in (EXAMPLES / "tiny-llama").iterdir())
    assert size < 2 * 1024 * 1024
    records = json.loads(CONVERSATIONS.read_text())
    assert len(records) >= 50 and all(r["category"] and r["conversations"] for r in records)
    assert any(len(r["conversations"]) > 3 for r in records)
    lines = (EXAMPLES / "data" / "instructions.jsonl").read_text().splitlines()
    assert len(lines) >= 50 and all({"instruction", "response"} <= set(json.loads(x)) for x in lines)
    seed_json = json.loads((EXAMPLES / "deepspeed-zero2.json").read_text())
    assert seed_json["zero_optimization"]["stage"] == 2 and seed_json["bf16"] == {"enabled": True}


def test_held_out_records_are_evaluated_by_default():
    from airo.core.training.arguments import training_overrides

    base = ["--model_name_or_path", "m", "--output_dir", "o"]
    assert training_overrides(_config(*base, "--save_steps", "7")).get("eval_strategy") == "steps"
    assert training_overrides(_config(*base, "--save_steps", "7"))["eval_steps"] == 7
    assert training_overrides(_config(*base, "--save_strategy", "epoch"))["eval_strategy"] == "epoch"
    assert training_overrides(_config(*base, "--eval_dataset_size", "0")).get("eval_strategy", "no") == "no"
    explicit = training_overrides(_config(*base, "--evaluation_strategy", "no"))
    assert "eval_strategy" not in explicit  # the user's choice stands


def test_worker_rank_leaves_without_teardown(tmp_path, monkeypatch):
    """A worker rank of a finished multi-process run flushes and leaves with os._exit(0),
    skipping the C++ teardown that aborted finished workers (SIGABRT) while rank 0 merged;
    it does not destroy the group rank 0 may still be using."""
    import os

    import torch.distributed as dist

    from airo.core.training import dist as airo_dist

    class Left(Exception):
        pass

    def fake_exit(code):
        raise Left(code)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
        monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 1)
        monkeypatch.setattr(os, "_exit", fake_exit)
        with pytest.raises(Left) as left:
            airo_dist.leave_process_group()
        assert left.value.args == (0,)
        assert dist.is_initialized()  # the worker did not tear down what rank 0 may still use
    finally:
        monkeypatch.undo()
        if dist.is_initialized():
            dist.destroy_process_group()


def test_train_command_leaves_its_process_group(tmp_path, monkeypatch):
    """`airo train` tears its process group down before exiting (a worker left to interpreter
    shutdown could die with SIGABRT after a finished run); the Python API does not."""
    import torch.distributed as dist

    from airo.core import api
    from airo.core.cli import main
    from airo.core.training.dist import leave_process_group

    class Done:
        def summary(self):
            return "done"

    def fake_train(config):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        return Done()

    monkeypatch.setattr(api, "train", fake_train)
    monkeypatch.setattr("airo.core.cli._config_from", lambda args: None)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["train"])
        assert exit_info.value.code == 0
        assert not dist.is_initialized()
        leave_process_group()  # nothing to leave: no error
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
