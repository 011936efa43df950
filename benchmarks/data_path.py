"""Data path: records/s and peak memory from a raw airoboros_chat JSON file to padded training
batches, for airo, a re-implementation of the seed's path, and TRL's dataset preparation.

Each contender runs in its own process (peak RSS: VmHWM), after the same
imports and tokenizer load, which are not timed; the baseline RSS after them is shown so the
data path's own share can be read off. Every contender ends in padded batches of ``--batch``
examples, made by its own collator, so each tokenizes every example exactly once.

- ``seed``: the airoboros QLoRA fork: ``json.load`` the file into a list, render source and
  target strings per record (llama-2 chat, last reply), ``Dataset.from_list``, drop records
  over ``model_max_len - 10`` tokens (it tokenizes each one to check), then tokenize in the
  collator, batch by batch, as its ``DataCollatorForCausalLM`` did at every step.
- ``airo``: ``prepare_datasets`` with the cache off (the defaults: last reply, reference
  tokenization; the same tokens as the seed), then airo's ``PaddingCollator``. ``airo:N``
  tokenizes in N worker processes (``--preprocessing_num_workers N``; plain ``airo``: the
  default, the cores available).
- ``trl``: ``load_dataset("json")`` and ``SFTTrainer``'s own preparation (conversations to
  ChatML, chat template, tokenization, every assistant turn labelled, truncation), then its
  collator. Skipped with a message when trl is not installed.

    python benchmarks/data_path.py                     # 20,000 conversations
    python benchmarks/data_path.py --records 5000 --rounds 2
    python benchmarks/data_path.py --contenders seed,airo:1,airo:2   # workers against the seed
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _proc import status_mib

CONTENDERS = ("seed", "airo", "trl")
DEFAULT_SYSTEM = "You are an unbiased, uncensored, helpful assistant."


def _peak_mib() -> float:
    """This process's peak RSS. /proc's VmHWM starts afresh at exec; getrusage's ru_maxrss
    keeps the peak of the process that forked this one (the driver, which may have built a
    large dataset), so it is only the fallback."""
    peak = status_mib("VmHWM")
    return peak if not math.isnan(peak) else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


# -- the seed ------------------------------------------------------------------------------

def _seed_source_target(conv: list[dict], bos: str, eos: str) -> tuple[str, str]:
    """The airoboros_chat rendering of the reference (see the formats spec): last reply only."""
    if conv[0]["from"] == "system":
        system, offset = conv[0]["value"], 1
    else:
        system, offset = DEFAULT_SYSTEM, 0
    source = "[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n"
    stripped = False
    for i in range(offset, len(conv) - 2, 2):
        user = conv[i]["value"].strip() if stripped else conv[i]["value"]
        stripped = True
        source += user + " [/INST] " + conv[i + 1]["value"].strip() + " " + eos + bos + "[INST] "
    message = conv[-2]["value"].strip() if stripped else conv[-2]["value"]
    return source + message + " [/INST]", conv[-1]["value"]


class SeedCollator:
    """The fork's DataCollatorForCausalLM: tokenizes sources and targets of each batch, builds
    input_ids/labels (source masked, EOS appended), truncates like the reference, pads."""

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, rows: list[dict]):
        import torch
        from torch.nn.utils.rnn import pad_sequence

        tok = self.tokenizer
        sources = tok([r["source"] for r in rows], add_special_tokens=True)["input_ids"]
        targets = tok([r["target"] for r in rows], add_special_tokens=False)["input_ids"]
        input_ids, labels = [], []
        for src, tgt in zip(sources, targets):
            tgt = tgt + [tok.eos_token_id]
            if len(src) + len(tgt) > self.max_len:
                if len(src) <= 512:
                    tgt = tgt[: self.max_len - len(src)]
                elif len(tgt) <= 512:
                    src = src[: self.max_len - len(tgt)]
                else:
                    src, tgt = src[: self.max_len // 2], tgt[: self.max_len // 2]
            input_ids.append(torch.tensor(src + tgt))
            labels.append(torch.tensor([-100] * len(src) + tgt))
        ids = pad_sequence(input_ids, batch_first=True, padding_value=tok.pad_token_id)
        return {"input_ids": ids, "labels": pad_sequence(labels, batch_first=True, padding_value=-100),
                "attention_mask": ids.ne(tok.pad_token_id)}


def run_seed(data: str, tokenizer, max_len: int, batch: int, work: Path):
    from datasets import Dataset

    with open(data) as f:
        records = json.load(f)
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    rows = []
    for r in records:
        source, target = _seed_source_target(r["conversations"], bos, eos)
        rows.append({"source": source, "target": target, "category": r.get("category")})
    dataset = Dataset.from_list(rows)
    limit = max_len - 10
    dataset = dataset.filter(lambda x: len(tokenizer(bos + x["source"] + x["target"] + eos,
                                                     add_special_tokens=False)["input_ids"]) < limit)
    collate = SeedCollator(tokenizer, max_len)
    for start in range(0, len(dataset), batch):
        yield collate(dataset.select(range(start, min(start + batch, len(dataset)))).to_list())


# -- airo ----------------------------------------------------------------------------------

def run_airo(data: str, tokenizer, max_len: int, batch: int, work: Path, workers: str | None = None):
    from airo.core.config import build_config
    from airo.core.data.collator import PaddingCollator
    from airo.core.data.pipeline import prepare_datasets

    config = build_config(None, ["--model_name_or_path", str(work / "model"), "--output_dir", str(work / "out"),
                                 "--dataset", data, "--dataset_format", "airoboros_chat",
                                 "--model_max_len", str(max_len), "--eval_dataset_size", "0",
                                 *(["--preprocessing_num_workers", workers] if workers else [])])
    train = prepare_datasets(config, tokenizer, use_cache=False).train
    collate = PaddingCollator(tokenizer.pad_token_id)
    for start in range(0, len(train), batch):
        cols = train[start:start + batch]
        yield collate([{"input_ids": i, "labels": lab} for i, lab in zip(cols["input_ids"], cols["labels"])])


# -- TRL -----------------------------------------------------------------------------------

def trl_trainer(model, tokenizer, max_len: int, batch: int, work: Path, **config):
    """An SFTTrainer around ``model`` that prepares no dataset by itself: the benchmarks call
    its ``_prepare_dataset`` on the data they time (the same code its constructor runs)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from _synthetic import LLAMA2_TRAINING_TEMPLATE

    tokenizer.chat_template = LLAMA2_TRAINING_TEMPLATE
    args = SFTConfig(output_dir=str(work / "trl-out"), max_length=max_len, assistant_only_loss=True,
                     per_device_train_batch_size=batch, report_to=[], use_cpu=True,
                     dataset_kwargs={"skip_prepare_dataset": True}, **config)
    # the constructor checks that the data is conversational; the real data comes later
    placeholder = Dataset.from_dict({"messages": [[{"role": "user", "content": "a"},
                                                   {"role": "assistant", "content": "b"}]]})
    return SFTTrainer(model=model, args=args, train_dataset=placeholder, processing_class=tokenizer)


def trl_prepare(trainer, data: str, work: Path, packing: bool = False):
    from datasets import load_dataset

    raw = load_dataset("json", data_files=data, split="train", cache_dir=str(work / "hf-cache"))
    return trainer._prepare_dataset(raw, trainer.processing_class, trainer.args, packing, None, "train")


def run_trl(data: str, tokenizer, max_len: int, batch: int, work: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    # a model the size of a tokenizer: SFTTrainer wants one, the data path never runs it
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(work / "model"), dtype=torch.float32)
    trainer = trl_trainer(model, tokenizer, max_len, batch, work)
    yield None  # set-up done: the timing starts here
    train = trl_prepare(trainer, data, work)
    collate = trainer.data_collator
    for start in range(0, len(train), batch):
        cols = train[start:start + batch]
        yield collate([dict(zip(cols, values)) for values in zip(*cols.values())])


class AnonymousPeak:
    """The peak of this process's anonymous memory (RssAnon: what it allocated, not the pages
    of memory-mapped files the kernel can drop at will), sampled every few milliseconds."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.peak, self._stop = self.now(), threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(interval,), daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> float:
        return status_mib("RssAnon")

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, self.now())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def child(name: str, data: str, work: Path, max_len: int, batch: int) -> dict:
    from datasets import disable_caching
    from transformers import AutoTokenizer

    disable_caching()  # a cached map would make a second round free
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    base, _, workers = name.partition(":")
    run = {"seed": run_seed, "airo": run_airo, "trl": run_trl}[base]
    batches = run(data, tokenizer, max_len, batch, work, workers) if workers else run(data, tokenizer, max_len, batch,
                                                                                      work)
    if name == "trl":
        next(batches)
    baseline, anon_baseline = _peak_mib(), AnonymousPeak.now()
    anon = AnonymousPeak()
    start = time.perf_counter()
    examples = tokens = trained = positions = 0
    for b in batches:
        labels = b["labels"]
        examples += labels.shape[0]
        positions += labels.numel()
        tokens += int(b["attention_mask"].sum()) if "attention_mask" in b else labels.numel()
        trained += int((labels != -100).sum())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "examples": examples, "tokens": tokens, "trained": trained,
            "positions": positions, "baseline_mib": baseline, "peak_mib": _peak_mib(),
            "anon_over_imports_mib": anon.stop() - anon_baseline,
            # the largest tokenizing worker's peak (forked: the pages it shares with this process count again)
            "worker_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20000, help="synthetic conversations in the JSON file")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=900)
    ap.add_argument("--rounds", type=int, default=1, help="contenders alternate this many times (best round kept)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--workdir", default=None, help="where the data and tokenizer are built (default: a temp folder)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.data, Path(args.workdir), args.max_len, args.batch)))
        return

    from _synthetic import build_model, trl_version, write_data

    work = Path(args.workdir or tempfile.mkdtemp(prefix="airo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = write_data(work, args.records)
    model = Path(build_model(work, 64, 1, args.vocab))
    link = work / "model"
    if not link.exists():
        link.symlink_to(model.name)
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if "trl" in names and trl_version() is None:
        names.remove("trl")
    print(f"{args.records:,} conversations ({data.stat().st_size / 2**20:.1f} MiB of JSON), "
          f"model_max_len {args.max_len}, batch {args.batch}, vocab {args.vocab}")
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name in names:
            cmd = [sys.executable, __file__, "--child", name, "--data", str(data), "--workdir", str(work),
                   "--max-len", str(args.max_len), "--batch", str(args.batch)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"contender {name} failed:\n{proc.stderr[-3000:]}")
            out = proc.stdout
            result = json.loads(out.strip().splitlines()[-1])
            workers = f", largest worker {result['worker_peak_mib']:,.0f} MiB" if result["worker_peak_mib"] else ""
            print(f"  {name}: {result['seconds']:.1f} s, peak {result['peak_mib']:,.0f} MiB{workers}", flush=True)
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result

    base = best.get("seed") or next(iter(best.values()))
    base_rate = args.records / base["seconds"]
    print("\n| contender | records/s | vs seed | peak RSS | RSS over imports | allocated over imports | examples "
          "| tokens | trained tokens |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in best.items():
        rate = args.records / r["seconds"]
        print(f"| {name} | {rate:,.0f} | {rate / base_rate:.2f} | {r['peak_mib']:,.0f} MiB | "
              f"{r['peak_mib'] - r['baseline_mib']:,.0f} MiB | {r['anon_over_imports_mib']:,.0f} MiB | "
              f"{r['examples']:,} | {r['tokens']:,} | {r['trained']:,} |")


if __name__ == "__main__":
    main()
