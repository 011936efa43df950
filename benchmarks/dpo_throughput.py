"""DPO pairs/s and peak memory: airo's ``--objective dpo`` (padded batches) against TRL's
DPOTrainer on the same synthetic pairs, model, LoRA and batch size, on this CPU, in one run.

Each contender trains in its own process (so its peak RSS is its own): a LoRA policy on a
small random llama, the reference being the base with the adapter disabled in both, fp32,
AdamW, ``--steps`` measured optimizer steps after one warm-up step. The pairs are plain
strings (TRL tokenizes the prompt, then prompt + reply and adds EOS; airo renders them with
the ``plain`` template: BOS, the prompt, the reply and EOS), so both see about the same
tokens per pair; the table says how many. Needs ``pip install trl`` for the TRL contender.

``airo_packed`` packs the pairs (``--sample_packing``: rows of 2 x ``--max-len`` tokens,
``--packed-rows`` rows a step), so its pairs per step vary with their lengths: the table
gives the mean.

    python benchmarks/dpo_throughput.py --pairs 256 --steps 20 --batch 8 --hidden 128 --layers 2
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_pairs(folder: Path, n: int, seed: int = 0) -> Path:
    from _synthetic import _text

    rng = random.Random(seed)
    path = folder / f"pairs-{n}-{seed}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "prompt": _text(rng, int(rng.lognormvariate(3.0, 0.6))),
                                 "chosen": _text(rng, int(rng.lognormvariate(3.6, 0.6))),
                                 "rejected": _text(rng, int(rng.lognormvariate(3.6, 0.6)))}) + "\n")
    return path


def _lora(model_path: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))


class _Clock:
    """Each step's end time and the pairs trained so far (counted as the collator batches them)."""

    def __init__(self):
        self.times: list[float] = []
        self.pairs: list[int] = []
        self.collated = 0

    def counting(self, collator, per_feature):
        def collate(features):
            self.collated += sum(per_feature(f) for f in features)
            return collator(features)
        return collate

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class StepClock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.times.append(time.perf_counter())
                clock.pairs.append(clock.collated)

        return StepClock()


def run_airo(model_path: str, data: Path, work: Path, args, packed: bool = False) -> dict:
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from airo.core.config import build_config
    from airo.core.objectives import select_objective

    config = build_config(None, ["--model_name_or_path", model_path, "--dataset", str(data), "--dataset_format",
                                 "preference", "--prompt_template", "plain", "--objective", "dpo",
                                 "--output_dir", str(work / "airo-out"), "--eval_dataset_size", "0",
                                 "--model_max_len", str(args.max_len), *(["--sample_packing"] if packed else [])])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    objective = select_objective(config).objective
    prepared = objective.prepare(config, tokenizer)
    model = _lora(model_path)
    targs = TrainingArguments(output_dir=str(work / "airo-trainer"),
                              per_device_train_batch_size=args.packed_rows if packed else args.batch,
                              max_steps=args.steps + 1, learning_rate=1e-4, report_to="none", use_cpu=True,
                              save_strategy="no", logging_steps=10 ** 6, remove_unused_columns=False)
    train, collator, cls, _ = objective.training_data(config, prepared.train, tokenizer, model, targs, Trainer)
    clock = _Clock()
    per_feature = (lambda f: len(f["seq_lens"]) // 2) if packed else (lambda f: 1)
    trainer = cls(model=model, args=targs, train_dataset=train, data_collator=clock.counting(collator, per_feature),
                  processing_class=tokenizer, callbacks=[clock.callback()])
    trainer.train()
    tokens = sum(len(r["prompt_input_ids"]) * 2 + len(r["chosen_input_ids"]) + len(r["rejected_input_ids"])
                 for r in prepared.train)
    return {"times": clock.times, "pairs": clock.pairs, "tokens_per_pair": tokens / len(prepared.train)}


def run_trl(model_path: str, data: Path, work: Path, args) -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer

    records = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    clock = _Clock()
    config = trl.DPOConfig(output_dir=str(work / "trl-trainer"), per_device_train_batch_size=args.batch,
                           max_steps=args.steps + 1, learning_rate=1e-4, report_to="none", use_cpu=True, bf16=False,
                           save_strategy="no", logging_steps=10 ** 6, max_length=args.max_len, beta=0.1)
    trainer = trl.DPOTrainer(model=_lora(model_path), args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[clock.callback()])
    trainer.data_collator = clock.counting(trainer.data_collator, lambda f: 1)
    prepared = trainer.train_dataset
    tokens = sum(len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in prepared)
    trainer.train()
    return {"times": clock.times, "pairs": clock.pairs, "tokens_per_pair": tokens / len(prepared),
            "trl": trl.__version__}


def contender(name: str, args) -> None:
    """One contender, in this process: prints its result as one JSON line."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _proc import status_mib

    work = Path(args.workdir)
    if name == "trl":
        result = run_trl(args.model, Path(args.data), work, args)
    else:
        result = run_airo(args.model, Path(args.data), work, args, packed=name == "airo_packed")
    times, pairs = result.pop("times")[1:], result.pop("pairs")[1:]  # the first step is the warm-up
    result["pairs_per_s"] = (pairs[-1] - pairs[0]) / (times[-1] - times[0])
    result["pairs_per_step"] = (pairs[-1] - pairs[0]) / (len(pairs) - 1)
    result["peak_rss_mib"] = status_mib("VmHWM")
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="measured steps per contender")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=900)
    ap.add_argument("--max-len", dest="max_len", type=int, default=512)
    ap.add_argument("--packed-rows", dest="packed_rows", type=int, default=1,
                    help="rows per step for airo_packed (a row: 2 x --max-len tokens of pairs)")
    ap.add_argument("--rounds", type=int, default=2, help="contenders alternate this many times")
    ap.add_argument("--workdir")
    ap.add_argument("--contender", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.contender:
        return contender(args.contender, args)

    sys.path.insert(0, str(Path(__file__).parent))
    from _synthetic import build_model, trl_version

    work = Path(args.workdir or tempfile.mkdtemp(prefix="airo-dpo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = write_pairs(work, args.pairs)
    model = build_model(work, args.hidden, args.layers, args.vocab)
    names = ["airo", "airo_packed"] + (["trl"] if trl_version() is not None else [])
    results: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            cmd = [sys.executable, __file__, "--contender", name, "--model", model, "--data", str(data),
                   "--workdir", str(work), "--steps", str(args.steps), "--batch", str(args.batch),
                   "--max-len", str(args.max_len), "--packed-rows", str(args.packed_rows)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
            results[name].append(json.loads(line[len("RESULT "):]))
    base = max(r["pairs_per_s"] for r in results["airo"])
    print(f"\n{args.pairs} pairs, batch {args.batch}, {args.steps} measured steps, hidden {args.hidden}, "
          f"{args.layers} layers, LoRA r=8 on every linear layer, fp32, best of {args.rounds} rounds")
    labels = {"airo": "airo dpo (padded)", "airo_packed": "airo dpo --sample_packing"}
    trl_base = max((r["pairs_per_s"] for r in results.get("trl", [])), default=None)
    print("| contender | pairs/step | pairs/s | vs airo padded | vs TRL | peak RSS (MiB) | tokens per pair |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        best = max(results[name], key=lambda r: r["pairs_per_s"])
        label = labels.get(name) or f"trl {best.get('trl', '')} DPOTrainer"
        vs_trl = f"{best['pairs_per_s'] / trl_base:.2f}" if trl_base else "n/a"
        print(f"| {label} | {best['pairs_per_step']:.1f} | {best['pairs_per_s']:.2f} | "
              f"{best['pairs_per_s'] / base:.2f} | {vs_trl} | {min(r['peak_rss_mib'] for r in results[name]):,.0f} | "
              f"{best['tokens_per_pair']:.0f} |")


if __name__ == "__main__":
    main()
