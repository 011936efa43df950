"""Tokens processed per epoch to train every assistant turn: ``--expand_conversations`` (one
example per assistant turn, the seed's) vs ``--train_on all_replies`` (one example per
conversation, every reply labelled), on the same synthetic data and tokenizer.

    python benchmarks/multiturn_cost.py --examples 2000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def _tokens(data, model, max_len, *flags):
    from transformers import AutoTokenizer

    from airo.core.config import build_config
    from airo.core.data.pipeline import prepare_datasets

    config = build_config(None, ["--model_name_or_path", model, "--output_dir", "unused", "--dataset", str(data),
                                 "--dataset_format", "airoboros_chat", "--model_max_len", str(max_len),
                                 "--eval_dataset_size", "0", *flags])
    report = prepare_datasets(config, AutoTokenizer.from_pretrained(model), use_cache=False).report
    return report.tokens["train"], report.trained_tokens["train"], report.examples["train"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=5000)
    ap.add_argument("--max-len", type=int, default=4096, help="long enough that no conversation is dropped")
    ap.add_argument("--vocab", type=int, default=900)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from _synthetic import build_model, write_data

    work = Path(args.workdir or tempfile.mkdtemp(prefix="airo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data, model = write_data(work, args.examples), build_model(work, 64, 1, args.vocab)
    expand = _tokens(data, model, args.max_len, "--expand_conversations", "true", "--train_on", "last_reply")
    replies = _tokens(data, model, args.max_len, "--train_on", "all_replies")
    print("| path | examples | tokens per epoch | trained tokens | tokens vs all_replies |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (tokens, trained, examples) in (("--expand_conversations", expand), ("--train_on all_replies", replies)):
        print(f"| {name} | {examples:,} | {tokens:,} | {trained:,} | {tokens / replies[0]:.2f} |")


if __name__ == "__main__":
    main()
