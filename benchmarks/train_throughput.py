"""Training throughput of airo's batching modes on the same data and model, in one run.

Contenders: ``padded`` (the seed's: random order, each batch padded to its longest example),
``group_by_length`` (transformers' length-grouped sampler) and ``sample_packing`` (airo's
packed rows, attended as ``airo train`` does: on CPU sdpa one example at a time), plus on
request ``sample_packing_mask`` (the same rows under a 4-D block-diagonal mask, airo's
sdpa path on CUDA). The data goes through airo's own pipeline
(``--train_on all_replies``); each step is forward + backward + AdamW on a LoRA adapter.
Contenders alternate in rounds so a burst of load from other processes hits them all, and
the ratios are against ``padded`` measured in the same run (absolute numbers on a shared
machine are noise).

    python benchmarks/train_throughput.py                   # the issue's setup (slow on CPU)
    python benchmarks/train_throughput.py --examples 400 --steps 8 --max-len 512 --hidden 128 --layers 2
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

CONTENDERS = ("padded", "group_by_length", "sample_packing")
PACKED = ("sample_packing", "sample_packing_mask")
ISOLATION = {"sample_packing": "yes (sdpa one example at a time)", "sample_packing_mask": "yes (4-D block-diagonal mask)"}


def use_attention(model, name) -> None:
    """The attention ``airo train`` gives this contender's batches on CPU: per-example sdpa for
    packed rows, sdpa (with the batch's mask) for everything else."""
    from airo.core.training.packed_attention import NAME

    model.config._attn_implementation = NAME if name == "sample_packing" else "sdpa"


def _batches(name, prepared, tokenizer, args, seed):
    """An endless iterator of collated batches for one contender."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from airo.core.data.collator import PackingCollator, PaddingCollator
    from airo.core.data.packing import example_lengths, pack_dataset

    train = prepared.train
    if name in PACKED:
        data, stats = pack_dataset(train, args.max_len, seed)
        collate = PackingCollator(tokenizer.pad_token_id, mask=None if name == "sample_packing" else "bool")
        print(f"  packing: {stats.summary()}")
    else:
        data, collate = train, PaddingCollator(tokenizer.pad_token_id)
    generator = torch.Generator().manual_seed(seed)
    while True:
        if name == "group_by_length":
            order = list(LengthGroupedSampler(args.batch, lengths=example_lengths(train), generator=generator))
        else:
            order = torch.randperm(len(data), generator=generator).tolist()
        for start in range(0, len(order) - args.batch + 1, args.batch):
            features = [data[i] for i in order[start:start + args.batch]]
            yield collate(features), sum(len(f["input_ids"]) for f in features)


def _model(path, args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from airo.core.training.packed_attention import use_packed_attention

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    # No KV cache in training, as airo's loaders and TRL's trainer set it: with a cache transformers
    # does not build the block-diagonal mask for padding-free rows (position_ids only).
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    use_packed_attention(model, "cpu")  # registers airo's per-example sdpa; use_attention picks per contender
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def _step(model, optim, batch):
    optim.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    optim.step()


def measure(model, optim, streams, names, args, first=None) -> dict[str, dict]:
    """``args.steps`` steps per contender, the contenders alternating in ``args.rounds``:
    {name: {"time", "trained", "positions", "real"}}. ``first`` holds a batch per contender
    drawn before (used first)."""
    totals = {n: {"time": 0.0, "trained": 0, "positions": 0, "real": 0} for n in names}
    first = dict(first or {})
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for name in names:
            t = totals[name]
            use_attention(model, name)
            for _ in range(per_round):
                batch, real = first.pop(name) if name in first else next(streams[name])
                start = time.perf_counter()
                _step(model, optim, batch)
                t["time"] += time.perf_counter() - start
                labels = batch["labels"]
                t["trained"] += int((labels[:, 1:] != -100).sum())
                t["positions"] += labels.numel()
                t["real"] += real
    return totals


def print_table(totals: dict[str, dict], isolation: dict[str, str], epoch: bool) -> None:
    """The results as a Markdown table, ratios against ``padded`` (else the first contender).
    ``epoch``: add the time to train every example once, for contenders that train the same
    examples (all their tokens over the real tokens per second)."""
    base = totals.get("padded") or next(iter(totals.values()))
    base_tps, base_pps = base["trained"] / base["time"], base["positions"] / base["time"]
    base_real = base["real"] / base["time"]
    extra = " epoch time vs padded |" if epoch else ""
    print(f"| contender | trained tokens/s | vs padded | positions/s | vs padded | padding waste |{extra} isolated |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if epoch else "") + " --- |")
    for name, t in totals.items():
        tps, pps = t["trained"] / t["time"], t["positions"] / t["time"]
        waste = 1 - t["real"] / max(1, t["positions"])
        cell = f" {base_real / (t['real'] / t['time']):.2f} |" if epoch else ""
        print(f"| {name} | {tps:,.0f} | {tps / base_tps:.2f} | {pps:,.0f} | {pps / base_pps:.2f} | "
              f"{100 * waste:.1f}% |{cell} {isolation[name]} |")


def main() -> None:
    from _synthetic import throughput_arguments

    ap = throughput_arguments(__doc__.split("\n")[0], contenders=",".join(CONTENDERS))
    args = ap.parse_args()

    import torch

    from _synthetic import build_model, write_data
    from airo.core.config import build_config
    from airo.core.data.pipeline import prepare_datasets
    from transformers import AutoTokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="airo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = write_data(work, args.examples)
    model_path = build_model(work, args.hidden, args.layers, args.vocab)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    config = build_config(None, ["--model_name_or_path", model_path, "--output_dir", str(work / "out"),
                                 "--dataset", str(data), "--dataset_format", "airoboros_chat",
                                 "--train_on", "all_replies", "--model_max_len", str(args.max_len),
                                 "--eval_dataset_size", "0"])
    prepared = prepare_datasets(config, tokenizer, use_cache=False)
    print(f"{len(prepared.train):,} examples ({prepared.report.dropped.get('too_long', 0):,} dropped as too long), "
          f"batch {args.batch}, model_max_len {args.max_len}, hidden {args.hidden}, {args.layers} layers")

    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    streams = {n: _batches(n, prepared, tokenizer, args, seed=0) for n in names}
    model, optim = _model(model_path, args)
    use_attention(model, names[0])
    _step(model, optim, next(streams[names[0]])[0])  # warm-up, not measured
    totals = measure(model, optim, streams, names, args)
    print()
    print_table(totals, {name: ISOLATION.get(name, "yes") for name in names}, epoch=True)


if __name__ == "__main__":
    main()
