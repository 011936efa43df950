"""The training run: helpers (collator, resume discovery, actions, optimizer), the seed's
QLoRA command end to end with a merge, kill-and-resume, and the README demo."""

from __future__ import annotations

import json
import os
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
    from airo.core.training import PaddingCollator

    batch = PaddingCollator(pad_token_id=0)([
        {"input_ids": [1, 5, 6, 2], "labels": [-100, -100, 6, 2]},
        {"input_ids": [1, 7], "labels": [-100, 7]},
    ])
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 2], [-100, 7, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    padded = PaddingCollator(pad_token_id=0, pad_to_multiple_of=8)([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])
    assert padded["input_ids"].shape == (1, 8)


def test_find_resume_checkpoint(tmp_path):
    from airo.core.training import CHECKPOINT_MARKER, find_resume_checkpoint

    assert find_resume_checkpoint(tmp_path / "missing") == (None, [])
    for step, complete in ((5, True), (10, True), (15, False), (20, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / CHECKPOINT_MARKER).write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    best, incomplete = find_resume_checkpoint(tmp_path)
    assert best.name == "checkpoint-10"
    assert [p.name for p in incomplete] == ["checkpoint-15", "checkpoint-20"]


def test_select_actions(airo_env, airo_plugin):
    from airo.core import hookimpl
    from airo.core.errors import PluginError
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
    with pytest.raises(PluginError, match="Did you mean 'merge'"):
        select_actions(_config(*base, "--post_train_actions", "merg"))


def test_resolve_optim(monkeypatch):
    import torch

    base = ["--model_name_or_path", "m", "--output_dir", "o"]
    assert _config(*base).resolve_optim() == "adamw_torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _config(*base).resolve_optim() == "paged_adamw_32bit"
    assert _config(*base, "--bits", "8").resolve_optim() == "paged_adamw_32bit"
    assert _config(*base, "--bits", "16").resolve_optim() == "adamw_torch"
    assert _config(*base, "--full_finetune").resolve_optim() == "adamw_torch"
    assert _config(*base, "--optim", "adafactor").resolve_optim() == "adafactor"


def test_training_arguments_from_seed_flags(tmp_path):
    from airo.core.training import _training_overrides

    config = _config("--model_name_or_path", "m", "--output_dir", tmp_path / "out", "--evaluation_strategy", "steps",
                     "--eval_steps", "5", "--gradient_checkpointing", "--bf16", "--ddp_find_unused_parameters", "False")
    args = config.training_arguments(**_training_overrides(config))
    assert args.output_dir == str(tmp_path / "out") + "-checkpoints"
    assert args.eval_strategy == "steps" and args.eval_steps == 5
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.optim == "adamw_torch" and args.bf16 and args.use_cpu
    assert args.neftune_noise_alpha == 5.0 and args.ddp_find_unused_parameters is False
    assert args.include_num_input_tokens_seen == "non_padding"
    off = _config("--model_name_or_path", "m", "--output_dir", "o", "--neftune_noise_alpha", "0")
    assert off.training_arguments(**_training_overrides(off)).neftune_noise_alpha is None


def test_atomic_directory(tmp_path):
    from airo.core.training import atomic_directory

    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash while saving")
    assert (target / "a.txt").read_text() == "1"  # the old output is intact
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    # keep_existing (working dir inside the output dir): files move in, the rest stays
    (target / "checkpoint-1").mkdir()
    with atomic_directory(target, keep_existing=True) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt", "c.txt", "checkpoint-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_completed_run_is_not_repeated(tmp_path, capsys):
    from airo.core.training import COMPLETED_FILE, run_training

    work = tmp_path / "work"
    work.mkdir()
    (work / COMPLETED_FILE).write_text(json.dumps({"global_step": 42, "outputs": {"adapter": "x"}}))
    config = _config("--model_name_or_path", "no-such-model", "--output_dir", tmp_path / "out",
                     "--working_dir", work, "--dataset", "no-such-file.json")
    result = run_training(config)  # would fail loudly if it tried to load anything
    assert result.already_complete and result.global_step == 42
    text = result.summary()
    assert "already complete" in text and str(work / COMPLETED_FILE) in text and "adapter: x" in text
    assert "options differ" not in text
    # the marker remembers the options: a changed command is pointed at a new working dir
    (work / COMPLETED_FILE).write_text(json.dumps({"global_step": 42, "config": config.to_dict() | {"lora_r": 8}},
                                                  default=str))
    assert "options differ from the completed run: lora_r" in run_training(config).summary()


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
    assert "--max_new_tokens is accepted for compatibility and ignored" in proc.stderr
    assert "flash_attention_2 was requested but" in out and "using sdpa" in out
    assert "loader:           qlora (LoRA adapter, 4-bit base, bf16)" in out
    assert "NEFTune:          on, noise alpha 5" in out
    for field in ("trainable params:", "examples:", "tokens:", "steps:", "batch:", "format/template:  airoboros_chat"):
        assert field in out, field
    assert "'eval_loss'" in out and "tok/s" in proc.stderr + out
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
    (partial / "adapter_model.safetensors").write_bytes(b"truncated")

    # 3. re-run the same command: it resumes at the saved step
    again = run_cli("train", *_resume_flags(tiny_model_dir, root))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"removing incomplete checkpoint(s) left by an interrupted save: {partial.name}" in again.stdout
    assert not partial.exists()
    assert f"resuming from {work / f'checkpoint-{killed_at}'} (step {killed_at} of {total})" in again.stdout
    logged = again.stdout.count("{'loss'") + again.stderr.count("{'loss'")
    assert logged == total - killed_at  # one log line per step after the checkpoint, none before
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
    assert "already complete" in third.stdout and "{'loss'" not in third.stdout + third.stderr
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
    losses = [float(line.split("'loss': '")[1].split("'")[0]) for line in (out + proc.stderr).splitlines()
              if "'loss': '" in line]
    assert losses and losses[-1] < losses[0]  # it learned something


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
