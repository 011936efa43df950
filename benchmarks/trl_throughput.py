"""Training throughput of TRL's SFTTrainer data (no packing, ``bfd`` padding-free packing,
``wrapped`` packing) against airo's padded run, seed-style run and ``--sample_packing``, on
the same synthetic data, model and training step as ``train_throughput.py``, in one run.

TRL prepares its data with ``SFTTrainer``'s own code and collator (every assistant turn
labelled through a llama-2 chat template with generation markers, ``max_length`` =
``--max-len``, truncation instead of dropping); the step is the same forward + backward +
AdamW on the same LoRA model for every contender, so the ratios compare the batches.
``seed_style`` is airo with ``--train_on last_reply`` and padding: the seed's batches.
By default airo keeps the start of conversations longer than ``--max-len`` (``--truncate_excess``)
as TRL does, so every contender trains on the same conversations; ``--airo-long drop`` uses
airo's default (drop and report them) instead.
Needs ``pip install trl`` (an optional benchmark dependency; without it the TRL contenders
are skipped with a message).

    python benchmarks/trl_throughput.py --examples 400 --steps 6 --max-len 512 --hidden 128 --layers 2 --batch 4
"""

from __future__ import annotations

import tempfile
from pathlib import Path

AIRO = ("padded", "seed_style", "sample_packing")  # and on request sample_packing_mask (the 4-D mask)
TRL = {"trl": {}, "trl_bfd": {"packing": True, "packing_strategy": "bfd"},
       "trl_wrapped": {"packing": True, "packing_strategy": "wrapped"}}


def _prepare_airo(model_path, data, work, max_len, train_on, long_examples):
    from transformers import AutoTokenizer

    from airo.core.config import build_config
    from airo.core.data.pipeline import prepare_datasets

    config = build_config(None, ["--model_name_or_path", model_path, "--output_dir", str(work / "out"),
                                 "--dataset", str(data), "--dataset_format", "airoboros_chat",
                                 "--train_on", train_on, "--model_max_len", str(max_len), "--eval_dataset_size", "0",
                                 *(["--truncate_excess"] if long_examples == "truncate" else [])])
    return prepare_datasets(config, AutoTokenizer.from_pretrained(model_path), use_cache=False)


def _trl_batches(name, model_path, data, work, args, seed):
    """An endless iterator of (batch, real tokens) from TRL's prepared data and collator."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from data_path import trl_prepare, trl_trainer

    # the trainer only prepares data and collates: a throwaway model keeps it off the measured one
    stub = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    trainer = trl_trainer(stub, AutoTokenizer.from_pretrained(model_path), args.max_len, args.batch, work, **TRL[name])
    train = trl_prepare(trainer, str(data), work, packing=trainer.args.packing)
    print(f"  {name}: {len(train):,} rows (padding_free={trainer.padding_free})")
    collate, generator = trainer.data_collator, torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(train), generator=generator).tolist()
        for start in range(0, len(order) - args.batch + 1, args.batch):
            features = [train[i] for i in order[start:start + args.batch]]
            batch = collate(features)
            yield {k: batch[k] for k in ("input_ids", "labels", "attention_mask", "position_ids") if k in batch}, \
                sum(len(f["input_ids"]) for f in features)


def _isolated(model, batch) -> str:
    """Whether the second example of a padding-free row gets the logits it gets alone."""
    import torch

    if "position_ids" not in batch:
        return "n/a"
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
    if len(starts) < 3:
        return "n/a"
    a, b = starts[1], starts[2]
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0, a:b]
        alone = model(input_ids=batch["input_ids"][:, a:b]).logits[0]
    diff = float((packed - alone).abs().max())
    return f"{'yes' if diff < 1e-4 else 'no'} under {model.config._attn_implementation} (max logit diff {diff:.1e})"


def main() -> None:
    from _synthetic import throughput_arguments

    ap = throughput_arguments(__doc__.split("\n")[0], contenders=",".join(AIRO + tuple(TRL)))
    ap.add_argument("--airo-long", choices=("truncate", "drop"), default="truncate",
                    help="what airo does with conversations over --max-len: truncate (--truncate_excess, like "
                         "TRL: every contender trains on the same conversations) or drop (airo's default)")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from _synthetic import build_model, trl_version, write_data
    from train_throughput import ISOLATION, _batches, _model, _step, measure, print_table, use_attention

    work = Path(args.workdir or tempfile.mkdtemp(prefix="airo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = write_data(work, args.examples)
    model_path = build_model(work, args.hidden, args.layers, args.vocab)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if any(n in TRL for n in names) and trl_version() is None:
        names = [n for n in names if n not in TRL]

    streams = {}
    for name in names:
        if name in TRL:
            streams[name] = _trl_batches(name, model_path, data, work, args, seed=0)
        else:
            prepared = _prepare_airo(model_path, data, work, args.max_len,
                                     "last_reply" if name == "seed_style" else "all_replies", args.airo_long)
            streams[name] = _batches("padded" if name == "seed_style" else name, prepared, tokenizer, args, seed=0)
    first = {n: next(streams[n]) for n in names}  # builds each contender's data before any timing
    model, optim = _model(model_path, args)
    use_attention(model, names[0])
    _step(model, optim, first[names[0]][0])  # warm-up, not measured
    isolated = {}
    for n in names:
        use_attention(model, n)
        isolated[n] = _isolated(model, first[n][0]) if n in TRL else "n/a"
    totals = measure(model, optim, streams, names, args, first=first)

    known = {"padded": "yes", "seed_style": "yes", **ISOLATION, "trl": "yes",
             "trl_wrapped": "no: one row holds several examples, cut at row ends, attending to each other"}
    print(f"\ntorch {torch.__version__}, batch {args.batch}, model_max_len {args.max_len}")
    print_table(totals, {n: isolated[n] if isolated[n] != "n/a" else known.get(n, "?") for n in names}, epoch=False)


if __name__ == "__main__":
    main()
