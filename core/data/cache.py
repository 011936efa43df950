"""Tokenized datasets kept for reuse: the cache key (everything that can change the examples,
the data by its content) and the folders ``airo preprocess`` and the cache write."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError
from ..fingerprint import dataset_content_hash, file_sha256
from .paths import PREPROCESSED_MARKER, REPORT_FILE, cache_home  # noqa: F401 - cache_home re-exported
from .plan import Plan, PreparedData
from .report import REJECTS_FILE, DataReport

CACHE_VERSION = 3  # 3: examples' dedup keys beside each split; template lists; decontamination


def _module_file(obj) -> str | None:
    import sys

    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    try:
        return inspect.getsourcefile(module) if module is not None else None
    except TypeError:
        return None


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    h.update(repr(sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items())).encode())
    return h.hexdigest()


def fingerprint(config: TrainConfig, plan: Plan | list[Plan], tokenizer, *, data_hash: str | None = None,
                screen: str | None = None) -> str:
    """The cache key. The data is identified by its content (``data_hash``, computed when not
    given), never by path, size or mtime: a record edited in place is a different dataset.
    ``plan``: one per template of the source; ``screen``: the decontamination's key."""
    from ..version import __version__

    d = config.data
    plans = plan if isinstance(plan, list) else [plan]
    plan = plans[0]
    templates = [p.template.template for p in plans]
    # Everything whose change changes the examples: the code of the pipeline and of the
    # plugins (their modules and the templates' classes), and the template objects' own values.
    code_files = sorted({*(str(p) for p in Path(__file__).parent.glob("*.py")),
                         str(Path(__file__).parent.parent / "types.py"),
                         *(f for f in (_module_file(plan.fmt.converter),
                                       *(_module_file(type(t)) for t in templates),
                                       *(_module_file(t) for t in templates)) if f)})
    code = [[Path(f).name, file_sha256(f) if os.path.isfile(f) else ""] for f in code_files]
    code.extend([repr(t), getattr(t, "chat_template", "")] for t in templates)
    content = data_hash if data_hash is not None else dataset_content_hash(d.dataset)
    key = {
        "v": CACHE_VERSION, "airo": __version__, "data": content or d.dataset or "",
        "format": plan.fmt.name, "template": [p.template.name for p in plans], "train_on": plan.trained,
        "source": [plan.choice, plan.split, plan.max_records, screen],
        "tokenization": plan.tokenization, "code": code, "tokenizer": tokenizer_fingerprint(tokenizer),
        "options": [d.model_max_len, d.eval_dataset_size, d.train_on_source, d.expand_conversations,
                    d.include_sources, d.skip_excess_length, d.on_bad_record, d.max_train_samples,
                    d.max_eval_samples, config.seed],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_root(config: TrainConfig) -> Path | None:
    """Where tokenized datasets are cached (``--dataset_cache_dir`` overrides), or None (off)."""
    root = config.data.dataset_cache_dir
    if root and root.lower() in ("off", "none", "0"):
        return None
    home = Path(root) if root else cache_home()
    return home / "datasets" if home is not None else None


def load_preprocessed(directory: str | Path, tokenizer=None) -> PreparedData:
    import datasets

    directory = Path(directory)
    meta = json.loads((directory / PREPROCESSED_MARKER).read_text())
    if tokenizer is not None and meta.get("tokenizer") != tokenizer_fingerprint(tokenizer):
        raise ConfigError(f"{directory} was tokenized with a different tokenizer than this run's; "
                          "run `airo preprocess` again with this model")
    loaded = datasets.load_from_disk(str(directory))
    report = DataReport.from_dict(json.loads((directory / REPORT_FILE).read_text()))
    rejects = directory / REJECTS_FILE
    if rejects.is_file():
        report.rejects_path = rejects
        report.rejects_file = str(rejects)
    from ..plugins import get_registry

    templates = get_registry().templates
    template = templates[meta["template"]].template if meta.get("template") in templates else None
    return PreparedData(loaded["train"], loaded["eval"] if "eval" in loaded else None, report,
                        meta.get("format", ""), meta.get("template", ""), template, meta.get("train_on", ""),
                        from_cache=True)


def is_preprocessed(path: str | None) -> bool:
    return bool(path) and (Path(path) / PREPROCESSED_MARKER).is_file()


# Data options recorded with a preprocessed folder: a run that reuses the folder with other
# values would silently train on examples made differently.
RECORDED_OPTIONS = ("dataset_format", "prompt_template", "train_on", "train_on_source", "model_max_len",
                    "expand_conversations", "include_sources", "skip_excess_length", "eval_dataset_size",
                    "max_train_samples", "max_eval_samples")


def preprocessed_meta(config: TrainConfig, plan: Plan, tokenizer, **extra) -> dict[str, Any]:
    return {"format": plan.fmt.name, "template": plan.template.name, "train_on": plan.trained,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "options": {k: getattr(config.data, k) for k in RECORDED_OPTIONS}, **extra}


def check_preprocessed_options(directory: str | Path, config: TrainConfig) -> None:
    meta = json.loads((Path(directory) / PREPROCESSED_MARKER).read_text())
    recorded = meta.get("options", {})
    differ = [f"--{k} {getattr(config.data, k)!r} (the folder has {recorded[k]!r})"
              for k in RECORDED_OPTIONS if k in config.explicit and k in recorded
              and getattr(config.data, k) != recorded[k]]
    if differ:
        raise ConfigError(f"{directory} is an `airo preprocess` output made with other data options: "
                          f"{', '.join(differ)}. Run `airo preprocess` again with these options, or drop them.")
