"""A mix of two sources through the per-source cache: the first build (both sources
tokenized), a changed weight (re-mixed, nothing tokenized), and one source edited (that
source tokenized again, the other read from the cache). Seconds for each, in one process.

    python benchmarks/data_mix.py --records 20000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20000, help="synthetic conversations, split into two sources")
    ap.add_argument("--workers", type=int, default=None, help="--preprocessing_num_workers (default: the cores)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from _synthetic import build_model, write_data

    work = Path(args.workdir or tempfile.mkdtemp(prefix="airo-mix-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    records = json.loads(write_data(work, args.records).read_text())
    half = len(records) // 2
    a, b = work / "a.json", work / "b.json"
    a.write_text(json.dumps(records[:half]))
    b.write_text(json.dumps(records[half:]))
    model = build_model(work, 64, 1, 900)

    import os

    os.environ["AIRO_CACHE"] = str(work / "cache")
    from airo.core.api import load_config
    from airo.core.data import pipeline
    from airo.core.tokenizer import load_tokenizer

    def run(label: str, weight: float) -> None:
        import yaml

        doc = {"model_name_or_path": str(model), "output_dir": str(work / "out"), "dedup": "prompt",
               "eval_dataset_size": 0, "model_max_len": 1024,
               "datasets": [{"path": str(a), "format": "airoboros_chat", "weight": weight},
                            {"path": str(b), "format": "airoboros_chat", "weight": 1}]}
        if args.workers:
            doc["preprocessing_num_workers"] = args.workers
        (work / "mix.yaml").write_text(yaml.safe_dump(doc))
        config = load_config(str(work / "mix.yaml"), [])
        tokenizer = load_tokenizer(config)
        start = time.perf_counter()
        prepared = pipeline.prepare_datasets(config, tokenizer)
        seconds = time.perf_counter() - start
        built = sum(r["examples_built"]["train"] for r in prepared.sources if not r["from_cache"])
        share = ", ".join(f"{r['train_examples']:,}" for r in prepared.sources)
        print(f"| {label} | {seconds:.1f} s | {built:,} | {share} | "
              f"{', '.join('yes' if r['from_cache'] else 'no' for r in prepared.sources)} |", flush=True)

    print(f"{args.records:,} conversations in two sources, dedup prompt, model_max_len 1024\n")
    print("| step | seconds | examples tokenized | examples in the mix (a, b) | sources from the cache |")
    print("| --- | ---: | ---: | ---: | --- |")
    run("first build", 1)
    run("weight 1 -> 3 (re-mix)", 3)
    b.write_text(json.dumps(records[half:] + records[:10]))  # edited: ten records more
    run("one source edited", 3)


if __name__ == "__main__":
    main()
