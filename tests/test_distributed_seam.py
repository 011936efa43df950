"""The distributed seam (airo.core.training.distributed): one backend per way of spreading a
run, each answering prepare, placement, full state dict, checkpoint format and summary."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest


def _zero(tmp_path, stage):
    path = tmp_path / f"zero{stage}.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": stage}}))
    return str(path)


def test_the_backend_follows_the_options():
    from airo.core.training.distributed import DataParallel, DeepSpeed, backend

    assert isinstance(backend({}), DataParallel)
    assert isinstance(backend(None), DataParallel)
    assert isinstance(backend({"deepspeed": "ds.json"}), DeepSpeed)
    assert isinstance(backend({"deepspeed": None}), DataParallel)


def test_deepspeed_reads_its_zero_stage_from_a_file_a_dict_or_inline_json(tmp_path):
    from airo.core.training.distributed import DeepSpeed

    assert DeepSpeed({"deepspeed": _zero(tmp_path, 3)}).zero_stage() == 3
    assert DeepSpeed({"deepspeed": {"zero_optimization": {"stage": 2}}}).zero_stage() == 2
    assert DeepSpeed({"deepspeed": '{"zero_optimization": {"stage": 1}}'}).zero_stage() == 1
    assert DeepSpeed({"deepspeed": str(tmp_path / "missing.json")}).zero_stage() is None  # DeepSpeed says why
    assert DeepSpeed({"deepspeed": {"zero_optimization": {"stage": True}}}).zero_stage() is None


def test_placement_puts_an_unshardable_model_on_this_processs_gpu(monkeypatch):
    import torch

    from airo.core.training.distributed import backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend({}).placement(shardable=False) == {}  # on CPU the Trainer places it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert backend({}).placement(shardable=False) == {"device_map": {"": 1}}
    assert backend({}).placement(shardable=True) == {}  # the Trainer (DDP) or DeepSpeed moves it


def test_zero3_refuses_an_unshardable_model_before_it_loads(tmp_path, monkeypatch):
    import torch

    from airo.core.errors import ConfigError
    from airo.core.training.distributed import backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"ZeRO stage 3.*cannot be sharded.*ZeRO stage 2"):
        backend({"deepspeed": _zero(tmp_path, 3)}).placement(shardable=False)
    assert backend({"deepspeed": _zero(tmp_path, 2)}).placement(shardable=False) == {}
    assert backend({"deepspeed": _zero(tmp_path, 3)}).placement(shardable=True) == {}


def test_the_qlora_loader_declares_a_4bit_base_unshardable(tmp_path, airo_env, tiny_model_dir, monkeypatch):
    """The loader asks the seam instead of pinning a device: under ZeRO-3 the 4-bit base is
    refused before from_pretrained runs."""
    import transformers

    from airo.core.config import build_config
    from airo.core.errors import ConfigError
    from airo.plugins.loaders import load_qlora

    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    config = build_config(None, ["--model_name_or_path", tiny_model_dir, "--dataset", "x.jsonl", "--output_dir",
                                 str(tmp_path / "out"), "--bits", "4", "--deepspeed", _zero(tmp_path, 3)])
    with pytest.raises(ConfigError, match="ZeRO stage 3"):
        load_qlora(config)


def test_model_placement_is_public_for_loaders(tmp_path):
    import airo.core
    from airo.core.config import build_config

    assert "model_placement" in airo.core.__all__
    config = build_config(None, ["--deepspeed", _zero(tmp_path, 3)], include_training=True)
    with pytest.raises(airo.core.ConfigError):
        airo.core.model_placement(config, shardable=False)


def test_checkpoint_formats_and_what_each_lacks(tmp_path):
    from airo.core.training.checkpoints import check_explicit_resume, missing_resume_files
    from airo.core.training.distributed import DataParallel, DeepSpeed, checkpoint_backend, is_sharded_checkpoint

    plain, sharded = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    plain.mkdir()
    (sharded / "global_step4").mkdir(parents=True)
    assert isinstance(checkpoint_backend(plain), DataParallel) and not is_sharded_checkpoint(plain)
    assert isinstance(checkpoint_backend(sharded), DeepSpeed) and is_sharded_checkpoint(sharded)
    assert missing_resume_files(plain) == ["trainer_state.json (readable)", "model or adapter weights",
                                           "optimizer.pt", "scheduler.pt", "rng_state*.pth"]
    assert missing_resume_files(sharded) == ["trainer_state.json (readable)", "latest (DeepSpeed tag)",
                                             "rng_state*.pth"]
    for name in ("latest", "trainer_state.json", "rng_state_0.pth"):
        (sharded / name).write_text("{}" if name.endswith(".json") else "x")
    from airo.core.errors import ConfigError

    with pytest.raises(ConfigError, match="DeepSpeed checkpoint airo did not mark complete.*pickle"):
        check_explicit_resume(sharded)


def test_describe_gives_the_run_summarys_lines(tmp_path):
    from airo.core.training.distributed import backend

    one = SimpleNamespace(world_size=1, deepspeed=None, device="cpu", ddp_backend=None)
    two = SimpleNamespace(world_size=2, deepspeed=None, device="cpu", ddp_backend=None)
    assert backend({}).describe(one) == []
    assert backend({}).describe(two) == ["  distributed:      DDP, 2 processes (gloo)"]
    path = _zero(tmp_path, 3)
    lines = backend({"deepspeed": path}).describe(SimpleNamespace(world_size=2, deepspeed=path))
    assert lines == [f"  DeepSpeed:        {path} (ZeRO stage 3)"]
    inline = {"zero_optimization": {"stage": 2}}
    assert backend({"deepspeed": inline}).describe(SimpleNamespace(world_size=2, deepspeed=inline)) == [
        "  DeepSpeed:        inline config (ZeRO stage 2)"]


def test_deepspeed_knowledge_lives_in_the_seam():
    """The recipe, the arguments, the checkpoints and the summary name no DeepSpeed internals:
    a new backend (FSDP2) is one more class in distributed.py."""
    from conftest import REPO

    for name in ("recipe.py", "arguments.py", "checkpoints.py", "summary.py", "run.py", "resume.py", "loop.py"):
        text = (REPO / "core" / "training" / name).read_text(encoding="utf-8")
        for needle in ("zero_stage", "deepspeed_plugin", "import deepspeed", "is_deepspeed_enabled", '"latest"',
                       'startswith("global_step")'):
            assert needle not in text, f"{name} names {needle}"
