"""Multi-process runs on CPU: torchrun + the seed's DeepSpeed ZeRO-2 JSON (full fine-tune, also
with sample packing), torchrun DDP (gloo) QLoRA with a merge, and accelerate launch."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES

pytestmark = pytest.mark.slow

CONVERSATIONS = EXAMPLES / "data" / "conversations.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, timeout=600):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout)
    return proc, time.time() - started


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
            f"--master_port={_free_port()}", "-m", "airo.core", "train", *args]


def seed_full_finetune_flags(model, root: Path) -> list:
    """The seed README's full fine-tune command: paths swapped, sizes shrunk, every other flag kept."""
    return [
        "--model_name_or_path", model,
        "--working_dir", root / "checkpoints",
        "--output_dir", root / "model",
        "--num_train_epochs", "1",            # seed: 5
        "--logging_steps", "1",
        "--save_strategy", "steps",
        "--save_steps", "4",                  # seed: 15
        "--save_total_limit", "1",
        "--data_seed", "11422",
        "--evaluation_strategy", "steps",
        "--eval_dataset_size", "0.1",         # seed: 0.02
        "--eval_steps", "4",                  # seed: 5
        "--max_new_tokens", "4096",
        "--dataloader_num_workers", "3",
        "--logging_strategy", "steps",
        "--optim", "adamw_torch",
        "--do_train",
        "--full_finetune",
        "--bits", "16",
        "--bf16",
        "--dataset", CONVERSATIONS,
        "--dataset_format", "airoboros_chat",
        "--model_max_len", "128",             # seed: 4096
        "--per_device_train_batch_size", "2", # seed: 12
        "--gradient_accumulation_steps", "1",
        "--learning_rate", "2e-5",
        "--lr_scheduler_type", "cosine",
        "--warmup_ratio", "0.005",
        "--weight_decay", "0.0",
        "--seed", "11422",
        "--report_to", "wandb",               # WANDB_MODE=offline in tests
        "--deepspeed", EXAMPLES / "deepspeed-zero2.json",
        "--gradient_checkpointing",
        "--use_flash_attention_2",
    ]


def _assert_one_writer(out: str, what: str):
    assert out.count(f"saved the {what}") == 1, "only rank 0 writes final artifacts"
    assert out.count("Training finished") == 1


def test_seed_full_finetune_torchrun_deepspeed_zero2(tiny_model_dir, tmp_path, airo_env):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    proc, elapsed = _run(_torchrun(*seed_full_finetune_flags(tiny_model_dir, tmp_path)))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"torchrun x2 + DeepSpeed ZeRO-2 full fine-tune: {elapsed:.1f}s")
    out = proc.stdout
    assert "loader:           full (full fine-tune, bf16)" in out
    assert "x 2 process(es)" in out and "DeepSpeed:" in out
    _assert_one_writer(out, "model")
    work = tmp_path / "checkpoints"
    (checkpoint,) = list(work.glob("checkpoint-*"))  # save_total_limit 1
    assert list(checkpoint.glob("global_step*")), "a DeepSpeed checkpoint (ZeRO optimizer shards)"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert (work / "completed").is_file()

    model_dir = tmp_path / "model"
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.dtype == torch.bfloat16
    assert AutoTokenizer.from_pretrained(model_dir).chat_template
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    after = load_file(model_dir / "model.safetensors")
    changed = sum((before[k].to(torch.bfloat16) != after[k]).sum().item() for k in before)
    assert changed > 0, "the weights were trained"
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 5, 6, 7]])).logits
    assert torch.isfinite(logits).all()


def test_torchrun_deepspeed_zero2_sample_packing(tiny_model_dir, tmp_path, airo_env):
    """Packed rows under two processes: the plan is split to whole batches on each process, the
    summary announces the steps per epoch, the run takes exactly those optimizer steps (a last
    partial accumulation included), the losses are finite, and the tokens trained are the
    examples' tokens once per epoch (a row repeated to even out batches would add to them)."""
    proc, elapsed = _run(_torchrun(
        "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "model", "--full_finetune", "--bits", "16",
        "--bf16", "--dataset", CONVERSATIONS, "--dataset_format", "airoboros_chat", "--model_max_len", "200",
        "--sample_packing", "true", "--num_train_epochs", "2", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2", "--logging_steps", "1", "--save_steps", "4", "--eval_dataset_size", "0",
        "--optim", "adamw_torch", "--learning_rate", "2e-5", "--seed", "11422",
        "--deepspeed", EXAMPLES / "deepspeed-zero2.json", "--report_to", "none"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"torchrun x2 + DeepSpeed ZeRO-2 packed full fine-tune: {elapsed:.1f}s")
    out = proc.stdout
    assert "x 2 process(es)" in out and "DeepSpeed:" in out
    _assert_one_writer(out, "model")
    line = re.search(r"packing: +([\d,]+) examples in ([\d,]+) rows of 200 tokens \([\d.]+% filled\); "
                     r"per epoch: ([\d,]+) rows per process, ([\d,]+) steps; ([\d,]+) rows split off", out)
    assert line, out
    examples, rows, per_process, per_epoch, split = (int(g.replace(",", "")) for g in line.groups())
    report = json.loads((tmp_path / "model" / "data_report.json").read_text())
    assert examples == report["examples"]["train"]
    assert rows % (2 * 2) == 0 and per_process == rows // 2 and split > 0  # whole batches of 2 on each process
    batches = per_process // 2
    assert batches % 2, "an odd number of batches per process: the last accumulation is partial"
    assert per_epoch == math.ceil(batches / 2)
    assert f"steps:            {2 * per_epoch} (2 epochs)" in out
    assert "warning: --sample_packing" not in out  # nothing repeats

    work = tmp_path / "model-checkpoints"
    completed = json.loads((work / "completed").read_text())
    assert completed["global_step"] == 2 * per_epoch  # the optimizer steps the summary planned
    assert completed["data"]["processes"] == 2  # a resume on another count of processes is refused
    logged = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert len(losses) == completed["global_step"]  # --logging_steps 1: one loss per optimizer step
    assert all(loss is not None and math.isfinite(loss) for loss in losses), losses
    tokens = int(re.search(r"tokens: +([\d,]+) train", out)[1].replace(",", ""))
    seen = max(r.get("num_input_tokens_seen", 0) for r in logged)
    assert seen == 2 * tokens, "every example's tokens once per epoch, on the two processes together"


def test_torchrun_ddp_qlora_with_merge(tiny_model_dir, tmp_path, airo_env):
    from transformers import AutoModelForCausalLM

    proc, elapsed = _run(_torchrun(
        "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "peft",
        "--merged_output_dir", tmp_path / "merged", "--dataset", CONVERSATIONS,
        "--dataset_format", "airoboros_chat", "--model_max_len", "128", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--save_steps", "3",
        "--logging_steps", "1", "--bf16", "--bits", "4", "--lora_r", "8", "--eval_dataset_size", "0",
        "--gradient_checkpointing", "--ddp_find_unused_parameters", "False", "--report_to", "none"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"torchrun x2 DDP QLoRA + merge: {elapsed:.1f}s")
    out = proc.stdout
    assert "4 effective = 2 per device x 1 accumulation x 2 process(es)" in out
    _assert_one_writer(out, "adapter")
    assert out.count("merge: dequantize path") == 1
    report = json.loads((tmp_path / "peft" / "data_report.json").read_text())
    n_train = report["examples"]["train"]
    completed = json.loads((tmp_path / "peft-checkpoints" / "completed").read_text())
    assert completed["global_step"] == -(-n_train // 4)  # each step sees 2 x 2 examples
    AutoModelForCausalLM.from_pretrained(tmp_path / "merged")


def test_accelerate_launch_lora(tiny_model_dir, tmp_path, airo_env):
    """`accelerate launch` runs the same command; on CPU, two processes need --multi_gpu (gloo)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(_free_port()), "-m", "airo.core", "train",
           "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "peft",
           "--dataset", CONVERSATIONS, "--dataset_format", "airoboros_chat", "--model_max_len", "128",
           "--num_train_epochs", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
           "--bits", "16", "--bf16", "--lora_r", "8", "--eval_dataset_size", "0", "--report_to", "none"]
    proc, elapsed = _run(cmd)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"accelerate launch x2 LoRA: {elapsed:.1f}s")
    assert "x 2 process(es)" in proc.stdout
    _assert_one_writer(proc.stdout, "adapter")
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()


def test_torchrun_deepspeed_zero3_full_finetune(tiny_model_dir, tmp_path, airo_env):
    """ZeRO-3 shards the weights; rank 0 must still save the whole model (gathered on all ranks)."""
    import torch
    from safetensors.torch import load_file

    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}))
    proc, elapsed = _run(_torchrun(
        "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "model", "--full_finetune", "--bf16",
        "--dataset", CONVERSATIONS, "--dataset_format", "airoboros_chat", "--model_max_len", "128",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--save_steps", "4", "--eval_dataset_size", "0", "--optim", "adamw_torch", "--deepspeed", zero3,
        "--report_to", "none"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"torchrun x2 + DeepSpeed ZeRO-3 full fine-tune: {elapsed:.1f}s")
    _assert_one_writer(proc.stdout, "model")
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    after = load_file(tmp_path / "model" / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in after.items()} == {k: tuple(v.shape) for k, v in before.items()}
    assert all(v.dtype == torch.bfloat16 for v in after.values())
