"""Peak memory of a training run: ``airo train`` against a faithful re-implementation of the
seed's training path, on the same model, data, batch and steps, each in a process of its own.

Peak RSS is the child's ``ru_maxrss`` from ``os.wait4``: everything the run touched, from the
imports to the saved adapter. Linux carries a parent's peak over into a child it forks, so the
driver builds the data and model in a child of its own and stays small. Contenders:

- ``seed``: the airoboros fork's ``train.py`` with its defaults (LoRA on every linear layer of
  an fp32 base, gradient checkpointing on, NEFTune alpha 5): ``json.load``,
  ``Dataset.from_list``, the llama-2 chat rendering of the last reply, the length filter that
  tokenizes every record, ``Seq2SeqTrainer`` with the collator that tokenizes each batch, the
  adapter saved in the checkpoint and again at the end. Its optimizer is ``adamw_torch``
  (``paged_adamw_32bit`` needs CUDA) and nothing is held out (airo's run has no eval split).
- ``airo``: ``python -m airo.core train --train_on last_reply`` (the seed's tokens) with its
  defaults, ``--gradient_checkpointing`` as the seed's command lines pass it, ``--bits 32``
  LoRA on every linear layer, no eval split, the dataset cache off.
- ``airo_all_replies``: the same with ``--train_on all_replies``.
- ``airo_packed``: ``--sample_packing --train_on all_replies``.

Every contender takes ``--steps`` optimizer steps of ``--batch`` examples (gradient
accumulation 1) from the same shuffled order and saves one checkpoint, at the last step.
``--stages`` records RSS and peak RSS (``/proc/self/status``) at each stage: model loaded,
data prepared, trainer built, each step (with its batch shape), trained, saved.

glibc keeps freed heap memory for reuse, so on CPU a run's peak RSS is its live peak plus
whatever the allocation order left stranded, which varies from run to run by hundreds of
MiB. ``--mmap-threshold 131072`` (glibc's ``MALLOC_MMAP_THRESHOLD_``, for every contender)
gives large blocks back to the OS when freed: peak RSS is then close to the live peak and
repeatable, at the cost of slower steps. With ``--rounds N`` the contenders alternate N
times and the table shows the median peak and its range.

    python benchmarks/train_memory.py                  # the issue's setup, 20 steps
    python benchmarks/train_memory.py --examples 400 --steps 4 --max-len 512 --hidden 128 --layers 2 --stages
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTENDERS = ("seed", "airo", "airo_all_replies", "airo_packed")
AIRO_FLAGS = {"airo": ["--train_on", "last_reply"],
              "airo_all_replies": ["--train_on", "all_replies"],
              "airo_packed": ["--train_on", "all_replies", "--sample_packing"]}
STAGES_ENV = "TRAIN_MEMORY_STAGES"
LORA_R, LORA_ALPHA = 8, 16
SEED = 42


# -- stage probes (inside a contender) -----------------------------------------------------------

def stage(name: str) -> None:
    """Append RSS and peak RSS now to the file named by $TRAIN_MEMORY_STAGES (if set)."""
    path = os.environ.get(STAGES_ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"stage": name, "rss": status_mib("VmRSS"), "hwm": status_mib("VmHWM"),
                                 "anon": status_mib("RssAnon"), "time": time.time()}) + "\n")


def _probe_trainer() -> None:
    """Stages inside ``transformers.Trainer``: built, each step with its batch, trained."""
    from transformers import Trainer

    train, training_step = Trainer.train, Trainer.training_step

    @functools.wraps(train)
    def probed_train(self, *args, **kwargs):
        stage("trainer built")
        out = train(self, *args, **kwargs)
        stage("trained")
        return out

    @functools.wraps(training_step)
    def probed_step(self, model, inputs, *args, **kwargs):
        out = training_step(self, model, inputs, *args, **kwargs)
        shape = tuple(inputs["input_ids"].shape) if "input_ids" in inputs else ()
        stage(f"step {self.state.global_step + 1} {shape}")
        return out

    Trainer.train, Trainer.training_step = probed_train, probed_step


# -- the seed --------------------------------------------------------------------------------------

def run_seed(args, work: Path, model_path: str, data: str) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Seq2SeqTrainer, Seq2SeqTrainingArguments,
                              TrainerCallback, set_seed)

    from data_path import SeedCollator, _seed_source_target

    stage("imports")
    checkpointing = not args.no_checkpointing
    # get_accelerate_model: tokenizer (pad = unk), fp32 base, checkpointing, LoRA on every linear layer
    tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=False, padding_side="right")
    if not tokenizer.pad_token_id:
        tokenizer.pad_token_id, tokenizer.pad_token = tokenizer.unk_token_id, tokenizer.unk_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable()
    modules = sorted({name.split(".")[-1] for name, module in model.named_modules()
                      if isinstance(module, torch.nn.Linear)} - {"lm_head"})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=modules,
                                             lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    model.config.use_cache = False
    set_seed(SEED)
    stage("model loaded")

    # make_data_module: the whole file in a list, an in-memory Dataset, rendered, length-filtered
    with open(data) as fh:
        items = json.loads(fh.read())
    dataset = Dataset.from_list(items)
    del items
    bos, eos = tokenizer.bos_token, tokenizer.eos_token

    def render(item):
        source, target = _seed_source_target(item["conversations"], bos, eos)
        return {"source": source, "target": target}

    dataset = dataset.map(render)  # as the fork: rendered beside the record, then the record dropped
    dataset = dataset.remove_columns([c for c in dataset.column_names if c not in ("source", "target")])

    def fits(item):
        ids = tokenizer(f"{bos}{item['source']}{item['target']}{eos}", max_length=args.max_len + 1,
                        truncation=True, add_special_tokens=False).input_ids
        return len(ids) < args.max_len - 10

    dataset = dataset.filter(fits)
    stage("data prepared")

    training_args = Seq2SeqTrainingArguments(
        output_dir=str(work / "seed-out"), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_steps=args.steps, learning_rate=2e-4, max_grad_norm=0.3, lr_scheduler_type="constant",
        warmup_steps=0.03, weight_decay=0.0, logging_steps=10, save_strategy="steps", save_steps=args.steps,
        save_total_limit=40, neftune_noise_alpha=5, remove_unused_columns=False, report_to="none",
        optim="adamw_torch", activation_checkpointing=checkpointing, use_cpu=True, seed=SEED)

    class SavePeftModel(TrainerCallback):  # the fork's SavePeftModelCallback
        def on_save(self, args, state, control, model=None, **kwargs):
            model.save_pretrained(os.path.join(args.output_dir, f"checkpoint-{state.global_step}", "adapter_model"))

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.on_save(args, state, control, model=model)
            Path(args.output_dir, "completed").touch()

    trainer = Seq2SeqTrainer(model=model, processing_class=tokenizer, args=training_args, train_dataset=dataset,
                             data_collator=SeedCollator(tokenizer, args.max_len), callbacks=[SavePeftModel()])
    trainer.train()
    trainer.save_state()
    trainer.model.save_pretrained(str(work / "seed-final"))
    stage("saved")


# -- airo ------------------------------------------------------------------------------------------

def airo_flags(name: str, args, work: Path, model_path: str, data: str) -> list[str]:
    flags = ["train", "--model_name_or_path", model_path, "--dataset", data, "--dataset_format", "airoboros_chat",
             "--output_dir", str(work / f"{name}-out"), "--dataset_cache_dir", "off",
             "--bits", "32", "--lora_r", str(LORA_R), "--lora_alpha", str(LORA_ALPHA), "--lora_modules", "all",
             "--per_device_train_batch_size", str(args.batch), "--gradient_accumulation_steps", "1",
             "--max_steps", str(args.steps), "--save_steps", str(args.steps), "--model_max_len", str(args.max_len),
             "--eval_dataset_size", "0", "--seed", str(SEED), *AIRO_FLAGS[name]]
    # the flag the seed's command lines pass (the seed contender turns it on the same way)
    flags += ["--gradient_checkpointing", "false" if args.no_checkpointing else "true"]
    return flags + shlex.split(args.airo_flags)


def run_airo_probed(argv: list[str]) -> None:
    """``airo`` in this process, with stage probes around the data pipeline and the Trainer."""
    from airo.core import cli
    from airo.core.data import pipeline

    stage("imports")
    prepare = pipeline.prepare_datasets

    @functools.wraps(prepare)
    def probed_prepare(*args, **kwargs):
        stage("model loaded")
        out = prepare(*args, **kwargs)
        stage("data prepared")
        return out

    pipeline.prepare_datasets = probed_prepare  # the recipe imports it when it runs
    _probe_trainer()
    try:
        cli.main(argv)
    except SystemExit as exc:
        stage("saved")
        raise exc


# -- the parent ------------------------------------------------------------------------------------

def _run(cmd: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run ``cmd``; its wall time, peak RSS (ru_maxrss of that child, KiB) and exit code."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    return {"seconds": time.perf_counter() - start, "peak_mib": usage.ru_maxrss / 1024,
            "rc": os.waitstatus_to_exitcode(status)}


def _stage_line(rows: list[dict]) -> str:
    """The stages, with only the steps that raised the peak (by 1 MiB or more)."""
    shown, peak = [], 0.0
    for row in rows:
        if row["stage"].startswith("step") and row["hwm"] < peak + 1:
            continue
        peak = max(peak, row["hwm"])
        shown.append(f"{row['stage']} {row['rss']:,.0f}/{row['hwm']:,.0f}")
    return ", ".join(shown)


def parse_args(argv=None):
    from _synthetic import throughput_arguments

    ap = throughput_arguments(__doc__.split("\n")[0], contenders=",".join(CONTENDERS))
    ap.set_defaults(steps=20, rounds=1)
    ap.add_argument("--stages", action="store_true", help="also record RSS at each stage of each run")
    ap.add_argument("--mmap-threshold", type=int, default=None,
                    help="glibc MALLOC_MMAP_THRESHOLD_ for every contender (131072: peak RSS close to live memory)")
    ap.add_argument("--no-checkpointing", action="store_true",
                    help="gradient checkpointing off for every contender (the seed's default is on)")
    ap.add_argument("--airo-flags", default="", help="more flags for the airo contenders, as one quoted string")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON line at the end")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    return ap.parse_known_args(argv)


def _build(args, work: Path, script: str) -> tuple[str, str]:
    """(data file, model folder), made in a child so that the driver stays small."""
    built = subprocess.run([sys.executable, script, "--child", "build", "--workdir", str(work), "--examples",
                            str(args.examples), "--hidden", str(args.hidden), "--layers", str(args.layers),
                            "--vocab", str(args.vocab)], capture_output=True, text=True)
    if built.returncode:
        sys.exit(f"building the data and model failed:\n{built.stderr[-3000:]}")
    paths = json.loads(built.stdout.strip().splitlines()[-1])
    return paths["data"], paths["model"]


def _command(name: str, args, work: Path, script: str, model_path: str, data: str) -> list[str]:
    if name == "seed":
        sizes = ["--max-len", str(args.max_len), "--batch", str(args.batch), "--steps", str(args.steps)]
        return [sys.executable, script, "--child", "seed", "--model", model_path, "--data", data,
                "--workdir", str(work), *sizes, *(["--no-checkpointing"] if args.no_checkpointing else [])]
    flags = airo_flags(name, args, work, model_path, data)
    if args.stages:
        return [sys.executable, script, "--child", "airo", "--", *flags]
    return [sys.executable, "-m", "airo.core", *flags]


def _report(args, results: dict[str, dict], stages: dict[str, list[dict]]) -> None:
    for r in results.values():  # over rounds: the median peak (heap reuse moves it from run to run)
        r["peak_mib"] = statistics.median(r["peaks"])
    base = results.get("seed") or next(iter(results.values()))
    rounds = args.rounds > 1
    print("\n| contender | peak RSS | vs seed |" + (" range over rounds |" if rounds else "") + " wall time |")
    print("| --- | ---: | ---: |" + (" ---: |" if rounds else "") + " ---: |")
    for name, r in results.items():
        spread = f" {min(r['peaks']):,.0f}-{max(r['peaks']):,.0f} MiB |" if rounds else ""
        print(f"| {name} | {r['peak_mib']:,.0f} MiB | {r['peak_mib'] / base['peak_mib']:.2f} |{spread} "
              f"{r['seconds']:.0f} s |")
    if stages:
        print("\nRSS/peak RSS in MiB after each stage (steps: those that raised the peak), last round:\n")
        for name, rows in stages.items():
            print(f"- {name}: {_stage_line(rows)}")
    if args.json:
        print(json.dumps({name: {"peak_mib": r["peak_mib"], "peaks_mib": r["peaks"], "seconds": r["seconds"]}
                          for name, r in results.items()}))


def main() -> None:
    args, rest = parse_args()
    if args.child == "seed":
        if os.environ.get(STAGES_ENV):
            _probe_trainer()
        run_seed(args, Path(args.workdir), args.model, args.data)
        return
    if args.child == "airo":
        run_airo_probed(rest[1:] if rest[:1] == ["--"] else rest)
        return
    if args.child == "build":
        from _synthetic import build_model, write_data

        work = Path(args.workdir)
        print(json.dumps({"data": str(write_data(work, args.examples)),
                          "model": build_model(work, args.hidden, args.layers, args.vocab)}))
        return
    if rest:
        sys.exit(f"unknown arguments: {' '.join(rest)}")

    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        sys.exit(f"--contenders: unknown {', '.join(unknown)}; choose among {', '.join(CONTENDERS)}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="airo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    script = str(Path(__file__).resolve())
    data, model_path = _build(args, work, script)
    print(f"{args.examples:,} conversations, model_max_len {args.max_len}, batch {args.batch}, {args.steps} steps, "
          f"hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, LoRA r={LORA_R} on every linear layer, "
          f"fp32" + (", gradient checkpointing off" if args.no_checkpointing else "")
          + (f", MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold else ""))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    results: dict[str, dict] = {}
    stages: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name in names:
            for old in work.glob(f"{name}-*"):  # a fresh run each time: nothing to resume or skip
                if old.is_dir():
                    shutil.rmtree(old)
                else:
                    old.unlink()
            stage_file = work / f"{name}-stages.jsonl"
            result = _run(_command(name, args, work, script, model_path, data), work / f"{name}.log",
                          {**env, STAGES_ENV: str(stage_file)} if args.stages else env)
            if result["rc"]:
                tail = (work / f"{name}.log").read_text(errors="replace")[-3000:]
                sys.exit(f"contender {name} failed (exit {result['rc']}), log {work / f'{name}.log'}:\n{tail}")
            print(f"  {name}: peak {result['peak_mib']:,.0f} MiB, {result['seconds']:.0f} s", flush=True)
            kept = results.setdefault(name, {"peaks": [], "seconds": float("inf")})
            kept["peaks"].append(result["peak_mib"])
            kept["seconds"] = min(kept["seconds"], result["seconds"])  # the round least slowed by others
            if args.stages:
                stages[name] = [json.loads(line) for line in stage_file.read_text().splitlines()]
    _report(args, results, stages)


if __name__ == "__main__":
    main()
