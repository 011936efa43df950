"""Peak memory and speed of one training step: the plain causal LM loss (full-vocabulary fp32
logits) against airo's chunked loss (``airo.core.training.chunked_loss``), on a llama with a
128k vocabulary at 2,048 tokens.

Each measurement is a process of its own (``--one`` runs inside it): the model is built from
a seed, one warm-up step runs, then Linux's peak-RSS counter is reset (``/proc/self/clear_refs``)
and ``--steps`` steps are timed. The peak reported is the step's growth over the RSS before
it: the logits, the loss's buffers and the gradients, not the model. glibc's mmap threshold is
set low (``MALLOC_MMAP_THRESHOLD_``) for both contenders so freed blocks go back to the OS and
the peak is the live peak. Contenders alternate, ``--rounds`` times; the table shows medians
and the ratio chunked / plain. The losses of the two are compared on the same batch.

    python benchmarks/chunked_loss.py                       # LoRA, vocab 128256, 2048 tokens
    python benchmarks/chunked_loss.py --mode full --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _proc import status_mib  # noqa: E402


def one(args) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from airo.core.training.chunked_loss import chunked_lm_head

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 2,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=generator)
    labels = ids.clone()
    labels[:, : args.tokens // 4] = -100  # a prompt that is not trained on

    def step() -> float:
        if args.contender == "plain":
            loss = model(input_ids=ids, labels=labels).loss
        else:
            with chunked_lm_head(model, labels):
                loss = model(input_ids=ids).logits
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    loss = step()  # warm-up: allocator, kernels, the gradients' first allocation
    before = status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = (time.perf_counter() - started) / args.steps
    return {"contender": args.contender, "loss": loss, "step_s": elapsed,
            "tokens_per_s": args.batch * args.tokens / elapsed, "peak_growth_mib": status_mib("VmHWM") - before}


def run_one(args, contender: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=str(args.threads))
    argv = [sys.executable, __file__, "--one", "--contender", contender]
    for name in ("vocab", "tokens", "hidden", "layers", "batch", "steps", "mode", "threads"):
        argv += [f"--{name}", str(getattr(args, name))]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--contender", choices=["plain", "chunked"], default="plain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    results: dict[str, list[dict]] = {"plain": [], "chunked": []}
    for round_ in range(args.rounds):
        order = ("plain", "chunked") if round_ % 2 == 0 else ("chunked", "plain")
        for contender in order:
            results[contender].append(run_one(args, contender))
            print(f"round {round_ + 1} {contender}: {results[contender][-1]}", file=sys.stderr, flush=True)
    med = {c: {k: statistics.median(r[k] for r in rs) for k in ("peak_growth_mib", "tokens_per_s", "loss")}
           for c, rs in results.items()}
    print(f"{args.mode}, vocab {args.vocab}, {args.batch} x {args.tokens} tokens, hidden {args.hidden}, "
          f"{args.layers} layers, {args.threads} threads; medians of {args.rounds}")
    print("| contender | step peak growth (MiB) | tokens/s | loss |")
    print("|---|---:|---:|---:|")
    for c in ("plain", "chunked"):
        print(f"| {c} | {med[c]['peak_growth_mib']:.0f} | {med[c]['tokens_per_s']:.0f} | {med[c]['loss']:.6f} |")
    print(f"| chunked / plain | {med['chunked']['peak_growth_mib'] / med['plain']['peak_growth_mib']:.2f}x | "
          f"{med['chunked']['tokens_per_s'] / med['plain']['tokens_per_s']:.2f}x | "
          f"diff {abs(med['chunked']['loss'] - med['plain']['loss']):.1e} |")


if __name__ == "__main__":
    main()
