"""``airo preprocess``: the tokenized dataset written to a folder of its own, all at once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..atomic import KIND_PREPROCESSED, atomic_directory, check_inputs_outside, check_replaceable, check_separate
from ..config import TrainConfig
from ..errors import ConfigError
from ..fingerprint import dataset_content_hash
from .cache import PREPROCESSED_MARKER, preprocessed_meta
from .io import dataset_paths
from .pipeline import build_folder
from .plan import resolve_plan
from .report import REJECTS_FILE, DataReport


@dataclass
class PreprocessResult:
    output_dir: str
    report: DataReport

    def summary(self) -> str:
        return "\n".join(self.report.summary_lines() + [f"saved to {self.output_dir}"])


def preprocess_to_disk(config: TrainConfig, output_dir: str) -> PreprocessResult:
    """Tokenize the data into ``output_dir``, written all at once (an earlier `airo
    preprocess` output there is replaced; any other non-empty folder is refused).

    When it fails, ``output_dir`` is left as it was (a new one is not created). If the data
    left no training example, every rejected record goes to ``OUTPUT_DIR.rejects.jsonl``
    beside it, which the error names: outside the folder, so it never blocks the next run,
    which removes it once the folder is written.
    """
    from ..tokenizer import load_tokenizer

    if config.data.datasets:
        raise ConfigError("`airo preprocess` writes one --dataset; a datasets: list needs none: "
                          "`airo train` caches each source on its own and mixes them")
    out = check_preprocess_output(config, output_dir)
    tokenizer = load_tokenizer(config)
    plan = resolve_plan(config)
    failed_rejects = failed_rejects_path(out)
    meta = preprocessed_meta(config, plan, tokenizer, model_name_or_path=config.model.model_name_or_path,
                 data_fingerprint=dataset_content_hash(config.data.dataset))
    with atomic_directory(output_dir, kind=KIND_PREPROCESSED, markers=(PREPROCESSED_MARKER,),
                          what="--output folder") as tmp:
        report = build_folder(tmp, config, tokenizer, plan, meta, failed_rejects)
    if _is_rejects_file(failed_rejects):
        failed_rejects.unlink()
    report.rejects_path = out / REJECTS_FILE if (out / REJECTS_FILE).is_file() else None
    report.rejects_file = str(report.rejects_path) if report.rejects_path else None
    return PreprocessResult(str(out), report)


def check_preprocess_output(config: TrainConfig, output_dir: str | Path) -> Path:
    """``--output``, checked before anything loads: new, empty or an `airo preprocess` output
    (never an adapter, a model, a working dir or a user's folder; see ``check_replaceable``),
    and apart from what it reads (the dataset, the model and tokenizer folders)."""
    check_replaceable(output_dir, kind=KIND_PREPROCESSED, markers=(PREPROCESSED_MARKER,), what="--output folder")
    out = Path(output_dir).resolve()
    inputs = [("--dataset", p) for p in dataset_paths(config.data.dataset)]
    inputs += [(option, value) for option, value in (("--model_name_or_path", config.model.model_name_or_path),
                                                     ("--tokenizer_name_or_path", config.model.tokenizer_name_or_path))
               if isinstance(value, str) and value and Path(value).exists()]
    check_inputs_outside([("--output", out)], inputs)
    # inside a folder it reads: the next read would see the output
    check_separate([("--output", out), *((name, path) for name, path in inputs if Path(path).is_dir())])
    return out


def failed_rejects_path(output_dir: str | Path) -> Path:
    """Where ``preprocess_to_disk`` puts the rejects of a run that wrote nothing."""
    out = Path(output_dir).resolve()
    return out.parent / f"{out.name}.{REJECTS_FILE}"


def _is_rejects_file(path: Path) -> bool:
    """A rejects file airo wrote (only such a file is ever removed)."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = json.loads(fh.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and {"location", "reason", "problem"} <= first.keys()
