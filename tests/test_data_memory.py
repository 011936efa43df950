"""Preprocessing memory is flat in the number of records, and a huge record costs little.

Each case runs `airo preprocess` in a subprocess and reads its peak RSS; the bound is on
the growth over preprocessing a tiny file in the same way. Measured on the code before
streaming (50 MB inputs): +565 MB for a JSON array, +572 MB for JSON Lines, +1.6 GB and
25 s for one 20 MB line, +260 MB for 6 MB fully tokenized; streaming stays under +60 MB
and the huge line under +150 MB in 5 s.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

resource = pytest.importorskip("resource")  # peak RSS; POSIX only

SCRIPT = r"""
import json, resource, sys
from airo.core import api

tokenizer, dataset, out, *flags = sys.argv[1:]
config = api.load_config(None, ["--model_name_or_path", tokenizer, "--dataset", dataset, *flags])
report = api.preprocess(config, out).report.to_dict()
# VmHWM starts afresh at exec; ru_maxrss keeps the peak of the process that forked this one
# (pytest, after training models), which would hide this process's own
try:
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mb": peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), "report": report}))
"""

WORDS = ("the a chat user what is two plus four hello world you are helpful code python answer question sky "
         "blue light").split()


def write_records(path, megabytes: float, *, array: bool) -> int:
    """Small airoboros records (about 150 bytes each), five categories, each record's content
    its own (the eval split is by content: repeated records would be one group)."""
    target, size, n = int(megabytes * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[" if array else "")
        while size < target:
            words = [WORDS[(n * 7 + k * 3) % len(WORDS)] for k in range(20)]
            line = json.dumps({"instruction": " ".join(words[:12]) + f" {n}", "response": " ".join(words[12:]),
                               "category": f"c{n % 5}"})
            line = ("," if array and n else "") + line + ("" if array else "\n")
            fh.write(line)
            size += len(line)
            n += 1
        fh.write("]" if array else "")
    return n


def preprocess(tokenizer_dir, dataset, out, *flags) -> tuple[float, dict]:
    env = {"AIRO_CACHE": "off", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tokenizer_dir), str(dataset), str(out), *flags],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["peak_mb"], result["report"]


@pytest.fixture(scope="module")
def baseline_mb(tiny_tokenizer_dir, tmp_path_factory) -> float:
    """Peak RSS of preprocessing a tiny file: imports, tokenizer, the Arrow machinery."""
    folder = tmp_path_factory.mktemp("baseline")
    write_records(folder / "tiny.jsonl", 0.01, array=False)
    return preprocess(tiny_tokenizer_dir, folder / "tiny.jsonl", folder / "out")[0]


@pytest.mark.slow
@pytest.mark.parametrize("array", [True, False], ids=["json-array", "jsonl"])
def test_reading_is_flat_in_the_number_of_records(array, tiny_tokenizer_dir, baseline_mb, tmp_path):
    data = tmp_path / ("big.json" if array else "big.jsonl")
    n = write_records(data, 50, array=array)
    # Every record is read, converted and split twice; tokenizing is capped to keep this fast.
    peak, report = preprocess(tiny_tokenizer_dir, data, tmp_path / "out", "--max_train_samples", "1000",
                              "--eval_dataset_size", "0.001")
    assert report["records_read"] == n > 300_000
    assert report["examples"] == {"train": 1000, "eval": math.ceil(0.001 * n)}
    assert peak - baseline_mb < 150, f"peak {peak:.0f} MB, baseline {baseline_mb:.0f} MB"


@pytest.mark.slow
def test_tokenized_examples_are_not_held_in_memory(tiny_tokenizer_dir, baseline_mb, tmp_path):
    data = tmp_path / "six.jsonl"
    n = write_records(data, 6, array=False)
    peak, report = preprocess(tiny_tokenizer_dir, data, tmp_path / "out")
    assert report["examples"]["train"] + report["examples"]["eval"] == n and report["tokens"]["train"] > 1_000_000
    assert peak - baseline_mb < 150, f"peak {peak:.0f} MB, baseline {baseline_mb:.0f} MB"


@pytest.mark.slow
def test_one_huge_line_is_dropped_without_tokenizing_it(tiny_tokenizer_dir, baseline_mb, tmp_path):
    data = tmp_path / "huge.jsonl"
    with open(data, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"instruction": "hello " * 3_500_000, "response": "ok"}) + "\n")  # 21 MB
        fh.write(json.dumps({"instruction": "what is two plus two", "response": "four"}) + "\n")
    peak, report = preprocess(tiny_tokenizer_dir, data, tmp_path / "out", "--eval_dataset_size", "0",
                              "--on_bad_record", "skip")
    assert report["dropped"] == {"too_long": 1} and report["examples"] == {"train": 1}
    rejects = (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8")
    assert "first" in json.loads(rejects)["problem"]  # counted on a prefix, never tokenized whole
    assert peak - baseline_mb < 400, f"peak {peak:.0f} MB, baseline {baseline_mb:.0f} MB"
