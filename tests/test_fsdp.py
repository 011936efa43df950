"""FSDP2 (``--fsdp``): the shorthand's TrainingArguments, the backend's answers, and (slow) real
runs under torchrun x2 on the CPU (gloo): the same losses and weights as one process with the
same global batch, sharded checkpoints that resume exactly, outputs plain transformers/peft load.

Tolerances: the runs are fp32 and see the same rows in the same order (accelerate deals batch
``i`` of the sampler's one permutation to rank ``i % 2``, so 2 processes x batch 1 take the same
two rows per step as 1 process x batch 2); the losses are normalised by the tokens of the whole
global batch either way. What differs is only the order of the fp32 sums (each rank sums its
row, the reduce-scatter adds the two), a rounding of ~1e-7 relative per step: measured, the
logged losses agree to the last digit and the weights to < 1e-6 after 6 steps at lr 2e-4 (an Adam
step moves a weight by ~lr, so rounding in the update stays far below it). The bounds (1e-5 on
losses of ~6.3, 1e-5 on weights) are ten times the measured difference and twenty times below
one optimizer step's change, which the runs also check they made.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import EXAMPLES

CONVERSATIONS = EXAMPLES / "data" / "conversations.json"


# -- the shorthand and the backend (fast) ------------------------------------------------------

def _config(*argv):
    from airo.core.config import build_config

    return build_config(None, ["--model_name_or_path", "m", "--dataset", "d.jsonl", "--output_dir", "o", *argv])


def _args(*argv):
    from airo.core.training.arguments import training_overrides

    config = _config(*argv)
    return config.training_arguments(**training_overrides(config))


def test_fsdp_shorthand_means_fsdp2_per_decoder_layer_with_sharded_checkpoints(airo_env, monkeypatch):
    import torch

    args = _args("--fsdp", "full_shard")
    plugin = args.fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["reshard_after_forward"] is True
    assert plugin["state_dict_type"] == "SHARDED_STATE_DICT"
    assert "transformer_cls_names_to_wrap" not in plugin  # accelerate wraps the model's _no_split_modules
    assert not plugin.get("cpu_offload")
    assert _args("--fsdp", "true").fsdp_plugin_args == plugin
    from airo.core.training.arguments import training_overrides

    config = _config("--fsdp", "full_shard offload")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # offload is for a GPU's run
    overrides = training_overrides(config)
    monkeypatch.undo()  # TrainingArguments would set up the (absent) GPU
    overrides.pop("use_cpu", None)
    offload = config.training_arguments(**overrides).fsdp_plugin_args
    assert offload["cpu_offload"] is True and offload["reshard_after_forward"] is True
    assert _args("--fsdp", "shard_grad_op").fsdp_plugin_args["reshard_after_forward"] is False


def test_fsdp_shorthand_checkpoints_activations_with_fsdps_own(airo_env, tmp_path):
    from airo.core import model_checkpointing

    args = _args("--fsdp", "full_shard", "--gradient_checkpointing")
    assert args.fsdp_plugin_args["activation_checkpointing"] is True and not args.activation_checkpointing
    assert not model_checkpointing(_config("--fsdp", "full_shard", "--gradient_checkpointing"))  # not twice
    assert model_checkpointing(_config("--gradient_checkpointing"))  # DDP: the model's
    assert not model_checkpointing(_config("--fsdp", "full_shard"))
    cfg = tmp_path / "fsdp.json"
    cfg.write_text("{}")
    args = _args("--fsdp", "full_shard", "--fsdp_config", str(cfg), "--gradient_checkpointing")
    assert args.activation_checkpointing and not args.fsdp_plugin_args.get("activation_checkpointing")  # theirs
    assert model_checkpointing(_config("--fsdp", "full_shard", "--fsdp_config", str(cfg), "--gradient_checkpointing"))


def test_a_users_fsdp_config_wins(airo_env, tmp_path):
    cfg = tmp_path / "fsdp.json"
    cfg.write_text(json.dumps({"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                               "reshard_after_forward": False}))
    plugin = _args("--fsdp", "full_shard auto_wrap", "--fsdp_config", str(cfg)).fsdp_plugin_args
    assert plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert plugin["reshard_after_forward"] is False  # the file's, not the shorthand's
    assert plugin["state_dict_type"] == "FULL_STATE_DICT"  # transformers' default: the file did not ask
    from airo.core.errors import ConfigError
    from airo.core.training.arguments import training_overrides

    cfg.write_text("{not json")
    with pytest.raises(ConfigError, match=r"--fsdp_config .*fsdp.json: cannot read it as JSON"):
        training_overrides(_config("--fsdp", "full_shard", "--fsdp_config", str(cfg)))


def test_fsdp_shorthand_refuses_unknown_words_and_false_turns_it_off(airo_env):
    from airo.core.errors import ConfigError
    from airo.core.training.arguments import training_overrides
    from airo.core.training.distributed import DataParallel, backend

    with pytest.raises(ConfigError, match=r"--fsdp must be .*got 'full_shrad'. Did you mean 'full_shard'"):
        _config("--fsdp", "full_shrad")  # the option's own check
    with pytest.raises(ConfigError, match=r"hybrid_shard is not an FSDP2 option"):
        training_overrides(_config("--fsdp", "hybrid_shard"))
    with pytest.raises(ConfigError, match="pick one"):
        training_overrides(_config("--fsdp", "full_shard shard_grad_op"))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="offload moves the shards to CPU memory.*no GPU"):
            training_overrides(_config("--fsdp", "full_shard offload"))
    config = _config("--fsdp", "false")
    assert training_overrides(config)["fsdp"] is None
    assert isinstance(backend(config.training), DataParallel)


def _described(**plugin):
    from airo.core.training.distributed import FSDP

    args = SimpleNamespace(fsdp_config={}, fsdp_plugin_args={"fsdp_version": 2, **plugin}, world_size=2, bf16=True,
                           fp16=False, activation_checkpointing=True)
    return "\n".join(FSDP({"fsdp": "full_shard"}).describe(args))


def test_fsdp_backend_applies_and_describes_the_run():
    from airo.core.training.distributed import FSDP, DataParallel, DeepSpeed, backend

    assert isinstance(backend({"fsdp": "full_shard"}), FSDP)
    assert isinstance(backend({"fsdp": True}), FSDP)
    assert isinstance(backend({"fsdp": None}), DataParallel)
    assert isinstance(backend({"fsdp": "no"}), DataParallel)
    assert isinstance(backend({"deepspeed": "ds.json"}), DeepSpeed)
    text = _described(reshard_after_forward=True, cpu_offload=True, state_dict_type="SHARDED_STATE_DICT")
    assert "distributed:      FSDP2, 2 processes, full_shard (reshard after forward)" in text
    assert "each decoder layer (the model's _no_split_modules)" in text
    assert "CPU offload on, mixed precision bf16, activation checkpointing the model's" in text
    assert "checkpoints sharded (torch.distributed.checkpoint)" in text
    text = _described(reshard_after_forward=False)
    assert "shard_grad_op" in text and "CPU offload off" in text and "checkpoints full (rank 0)" in text


def test_fsdp_refuses_one_process_and_an_unshardable_model(monkeypatch):
    from airo.core.errors import ConfigError
    from airo.core.training.distributed import FSDP

    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="shards the model over several processes.*torchrun"):
        FSDP({"fsdp": "full_shard"}).prepare()
    with pytest.raises(ConfigError, match="cannot be sharded.*8-bit.*--bits 4 or 16 / 32"):
        FSDP({"fsdp": "full_shard"}).placement(shardable=False)
    assert FSDP({"fsdp": "full_shard"}).placement(shardable=True) == {}


def test_a_4bit_base_under_fsdp_is_stored_in_the_compute_dtype(airo_env):
    import torch

    from airo.core import quant_storage_dtype

    assert quant_storage_dtype(_config("--fsdp", "full_shard"), torch.bfloat16) is torch.bfloat16
    assert quant_storage_dtype(_config(), torch.bfloat16) is None  # DDP: uint8, on this process's GPU


def test_fsdp_checkpoints_are_detected_and_checked(tmp_path):
    from airo.core.training.checkpoints import missing_resume_files
    from airo.core.training.distributed import FSDP, checkpoint_backend, is_sharded_checkpoint

    ckpt = tmp_path / "checkpoint-2"
    (ckpt / "pytorch_model_fsdp_0").mkdir(parents=True)
    (ckpt / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"x")
    assert isinstance(checkpoint_backend(ckpt), FSDP) and is_sharded_checkpoint(ckpt)
    missing = FSDP().missing_checkpoint_files(ckpt)
    assert any("optimizer_0/.metadata" in m for m in missing) and "scheduler.pt" in missing
    (ckpt / "optimizer_0").mkdir()
    (ckpt / "optimizer_0" / ".metadata").write_bytes(b"x")
    (ckpt / "scheduler.pt").write_bytes(b"x")
    assert FSDP().missing_checkpoint_files(ckpt) == []
    assert "rng_state*.pth" in missing_resume_files(ckpt)
    assert "pickle" in FSDP().refuse_unmarked(ckpt)
    full = tmp_path / "checkpoint-4"
    full.mkdir()
    (full / "pytorch_model_fsdp.bin").write_bytes(b"x")
    assert isinstance(checkpoint_backend(full), FSDP)
    assert not is_sharded_checkpoint(tmp_path)  # no FSDP files: plain Trainer files


# -- real runs (slow) --------------------------------------------------------------------------

def _flags(model, out, *extra):
    return ["--model_name_or_path", model, "--output_dir", out, "--dataset", CONVERSATIONS,
            "--dataset_format", "airoboros_chat", "--model_max_len", "256", "--max_steps", "6", "--save_steps", "2",
            "--gradient_accumulation_steps", "1", "--logging_steps", "1", "--eval_dataset_size", "0",
            "--neftune_noise_alpha", "0", "--seed", "7", "--report_to", "none", *extra]


def _one(model, out, *extra):
    from test_distributed import _run

    proc, elapsed = _run([sys.executable, "-m", "airo.core", "train", *_flags(model, out, *extra),
                          "--per_device_train_batch_size", "2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _fsdp_cmd(model, out, *extra):
    from test_distributed import _torchrun

    return _torchrun(*_flags(model, out, *extra), "--per_device_train_batch_size", "1", "--fsdp", "full_shard")


def _two(model, out, *extra):
    from test_distributed import _run

    proc, elapsed = _run(_fsdp_cmd(model, out, *extra))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"torchrun x2 FSDP2: {elapsed:.1f}s")
    assert "distributed:      FSDP2, 2 processes, full_shard" in proc.stdout
    assert "x 2 process(es)" in proc.stdout
    return proc


def _losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (Path(f"{out}-checkpoints") / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_fsdp2_full_finetune_matches_one_process_and_resumes_exactly(tiny_model_dir, tmp_path, airo_env):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from airo.core.training import CHECKPOINT_MARKER

    full = ("--full_finetune", "--bits", "32")
    _one(tiny_model_dir, tmp_path / "one", *full)
    _two(tiny_model_dir, tmp_path / "fsdp", *full)

    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "fsdp")
    assert len(one) == len(two) == 6
    loss_diff = max(abs(a - b) for a, b in zip(one, two))
    base = load_file(Path(tiny_model_dir) / "model.safetensors")
    single = load_file(tmp_path / "one" / "model.safetensors")
    sharded = load_file(tmp_path / "fsdp" / "model.safetensors")  # gathered on every rank, saved by rank 0
    weight_diff, moved = _max_diff(single, sharded), _max_diff(base, single)
    print(f"FSDP2 x2 vs 1 process (full fine-tune, fp32): max |loss diff| {loss_diff:.2e}, "
          f"max |weight diff| {weight_diff:.2e} (training moved weights by up to {moved:.2e})")
    assert loss_diff <= 1e-5 and weight_diff <= 1e-5 and moved > 20 * 1e-5
    AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp")  # plain transformers reads it

    work = tmp_path / "fsdp-checkpoints"
    checkpoint = work / "checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp_0" / ".metadata").is_file(), "model sharded with torch DCP"
    assert (checkpoint / "optimizer_0" / ".metadata").is_file(), "optimizer sharded with torch DCP"
    assert not (checkpoint / "model.safetensors").exists() and not (checkpoint / "optimizer.pt").exists()
    assert len(list((checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2  # one shard file per rank

    # stopped (SIGTERM to torchrun, which ends its workers) after its first complete checkpoint
    root = tmp_path / "run"
    run_work = Path(f"{root}-checkpoints")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([str(c) for c in _fsdp_cmd(tiny_model_dir, root, *full)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if list(run_work.glob(f"checkpoint-*/{CHECKPOINT_MARKER}")):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    proc.wait(timeout=120)
    assert not (run_work / "completed").exists(), "the run finished before it could be stopped"
    stopped_at = max(int(p.parent.name.split("-")[1]) for p in run_work.glob(f"checkpoint-*/{CHECKPOINT_MARKER}"))
    again = _two(tiny_model_dir, root, *full)
    assert f"resuming from {run_work / f'checkpoint-{stopped_at}'} (step {stopped_at} of 6)" in again.stdout
    resumed = load_file(root / "model.safetensors")
    resume_diff = _max_diff(sharded, resumed)
    print(f"FSDP2 resumed at step {stopped_at} vs uninterrupted: max |weight diff| {resume_diff:.2e}")
    assert resume_diff <= 1e-6
    assert _losses(root) == two  # every step logged once, the same losses


@pytest.mark.slow
def test_fsdp2_lora_matches_one_process(tiny_model_dir, tmp_path, airo_env):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    # --gradient_checkpointing: the model's in one process, FSDP's own around each layer under FSDP
    lora = ("--bits", "32", "--lora_r", "8", "--lora_dropout", "0", "--learning_rate", "1e-3",
            "--gradient_checkpointing")
    _one(tiny_model_dir, tmp_path / "one", *lora)
    proc = _two(tiny_model_dir, tmp_path / "fsdp", *lora, "--merged_output_dir", tmp_path / "merged")
    assert "activation checkpointing FSDP's" in proc.stdout
    assert proc.stdout.count("saved the adapter") == 1
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "fsdp")
    loss_diff = max(abs(a - b) for a, b in zip(one, two))
    a = load_file(tmp_path / "one" / "adapter_model.safetensors")
    b = load_file(tmp_path / "fsdp" / "adapter_model.safetensors")
    weight_diff = _max_diff(a, b)
    print(f"FSDP2 x2 vs 1 process (LoRA, fp32): max |loss diff| {loss_diff:.2e}, max |adapter diff| {weight_diff:.2e}")
    assert len(two) == 6 and loss_diff <= 1e-5 and weight_diff <= 1e-5
    configs = [json.loads((tmp_path / name / "adapter_config.json").read_text()) for name in ("fsdp", "one")]
    for config in configs:
        config["target_modules"] = sorted(config["target_modules"])  # peft keeps a set: its order varies
    assert configs[0] == configs[1]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "fsdp")
    AutoModelForCausalLM.from_pretrained(tmp_path / "merged")


@pytest.mark.slow
def test_fsdp2_qlora_4bit_base_is_sharded_and_trains(tiny_model_dir, tmp_path, airo_env):
    """QLoRA under FSDP2: the 4-bit base stored in bf16 (bnb_4bit_quant_storage) so accelerate
    shards it instead of leaving it out; bf16 compute, so the first step's loss (same weights,
    same rows) matches one process to bf16's rounding (~4e-3 relative), not to fp32's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    qlora = ("--bits", "4", "--bf16", "--lora_r", "8", "--lora_dropout", "0")
    _one(tiny_model_dir, tmp_path / "one", *qlora)
    proc = _two(tiny_model_dir, tmp_path / "fsdp", *qlora, "--merged_output_dir", tmp_path / "merged")
    assert "Excluding from FSDP2 sharding" not in proc.stdout + proc.stderr  # accelerate's note on uint8 storage
    assert "base quantized to 4-bit nf4" in proc.stdout and "mixed precision bf16" in proc.stdout
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "fsdp")
    print(f"FSDP2 x2 QLoRA vs 1 process: first loss {two[0]:.5f} vs {one[0]:.5f}")
    assert len(two) == 6 and abs(one[0] - two[0]) <= 2e-2
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "fsdp")
    AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
