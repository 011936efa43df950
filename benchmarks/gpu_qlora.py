"""QLoRA on a GPU: a randomly initialised ~1B llama-architecture model at model_max_len 2048,
trained through `airo train` (the real path: 4-bit bitsandbytes base, LoRA on every linear
layer, bf16, the seed's paged AdamW) with sample packing off and on.

Prints, per run: trained tokens/s (labels != -100), non-padding tokens/s, peak GPU memory
and MFU (6 x parameters x non-padding tokens/s over the GPU's dense bf16 peak: the usual
approximation; a frozen 4-bit base does less work in the backward pass, so this MFU reads
high for what the GPU does, and low against what a 16-bit full fine-tune would do). Ratios
are against the padded run measured in the same invocation.

    python benchmarks/gpu_qlora.py                 # ~1B model, 2048 tokens, 20 steps per run
    python benchmarks/gpu_qlora.py --layers 4      # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import write_data  # noqa: E402


def build_1b(folder: Path, args) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from airo.core.testing import build_tiny_tokenizer

    build_tiny_tokenizer(folder)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=4096, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(folder))
    params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    return params


def run(model: str, data: Path, root: Path, packing: bool, args) -> dict:
    import torch

    from airo.core import api

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    flags = ["--model_name_or_path", model, "--dataset", str(data), "--dataset_format", "airoboros_chat",
             "--train_on", "all_replies", "--model_max_len", str(args.seq), "--bits", "4", "--bf16",
             "--lora_r", "64", "--lora_alpha", "16", "--per_device_train_batch_size", str(args.batch),
             "--gradient_accumulation_steps", "1", "--max_steps", str(args.steps), "--logging_steps", "1",
             "--save_strategy", "no", "--eval_dataset_size", "0", "--report_to", "none",
             "--output_dir", str(root / f"out-{packing}"), "--dataset_cache_dir", str(root / "cache"),
             "--gradient_checkpointing", "--post_train_actions", "none"]
    if packing:
        flags.append("--sample_packing")
    if args.attn:
        flags += ["--attn_implementation", args.attn]
    config = api.load_config(None, flags)
    started = time.time()
    result = api.train(config)
    wall = time.time() - started
    records = [json.loads(line) for line in (root / f"out-{packing}-checkpoints" / "metrics.jsonl").read_text()
               .splitlines()]
    # steady state: from the log after the first step (compile/warm-up) to the last
    steps = [r for r in records if "loss" in r and "train_runtime" in r]
    first, last = steps[0], steps[-1]
    seconds = last["train_runtime"] - first["train_runtime"]
    tokens = last["num_input_tokens_seen"] - first["num_input_tokens_seen"]
    return {"packing": packing, "steps": result.global_step, "wall_s": round(wall, 1),
            "tokens_per_s": tokens / seconds if seconds > 0 else None,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
            "final_loss": result.final_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv_heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--attn", default=None, help="sdpa (default) or flash_attention_2 when installed")
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200: 989)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--allow_cpu", action="store_true", help="smoke-test the script on a CPU (tiny sizes)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("gpu_qlora.py needs a CUDA GPU (--allow_cpu smoke-tests it on a CPU)")
    os.environ.setdefault("WANDB_MODE", "disabled")
    root = Path(tempfile.mkdtemp(prefix="airo-gpu-bench-"))
    model = root / "model"
    model.mkdir()
    params = build_1b(model, args)
    data = write_data(root, args.records)
    print(f"model: {params / 1e9:.2f}B parameters (random), seq {args.seq}, batch {args.batch}, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}", flush=True)
    results = [run(str(model), data, root, packing, args) for packing in (False, True)]
    base = results[0]["tokens_per_s"]
    for r in results:
        r["mfu"] = 6 * params * r["tokens_per_s"] / (args.peak_tflops * 1e12) if r["tokens_per_s"] else None
        r["vs_padded"] = r["tokens_per_s"] / base if base and r["tokens_per_s"] else None
    print(f"{'run':<10} {'tokens/s':>10} {'vs padded':>10} {'peak GiB':>9} {'MFU':>6} {'wall s':>7}")
    for r in results:
        name = "packed" if r["packing"] else "padded"
        print(f"{name:<10} {r['tokens_per_s']:>10,.0f} {r['vs_padded']:>10.2f} {r['peak_gpu_gib']:>9.1f} "
              f"{100 * r['mfu']:>5.1f}% {r['wall_s']:>7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"params": params, "args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
