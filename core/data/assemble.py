"""The mix stage: each source's prepared examples (cached on their own) deduplicated across
sources, shared out by weight / records / epochs, in one seeded order (:mod:`.mix` does the
arithmetic), with the report of what each source contributed."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from ..fingerprint import dataset_content_hash
from .mix import dedup, keys_array, mix_indices, token_counts
from .paths import SHARD, scratch_dir
from .plan import PreparedData
from .report import KEPT_REJECTS, DataReport
from .sources import SourceState
from .writer import read_keys


def _keys(prepared: PreparedData, split: str, size: int) -> np.ndarray:
    folder = getattr(prepared, "folder", None)
    if size == 0:
        return np.empty((0, 3), dtype=np.int64)
    path = Path(folder) / split / SHARD
    return keys_array(read_keys(path), size, str(path.parent))


def _merge_rejects(states: list[SourceState], report: DataReport) -> None:
    """Every source's rejects, in list order, in one file (each row's location names its file)."""
    spooled = [s.report.rejects_path for s in states
               if s.report.rejects_path is not None and Path(s.report.rejects_path).is_file()]
    if not spooled:
        return
    path = scratch_dir() / "rejects.jsonl"
    with open(path, "wb") as out:
        for source in spooled:
            with open(source, "rb") as fh:
                shutil.copyfileobj(fh, out)
    report.rejects_path = path
    for s in states:
        report.rejects.extend(s.report.rejects[: KEPT_REJECTS - len(report.rejects)])


def assemble(config, states: list[SourceState], rejects_dir: str | None) -> PreparedData:
    """The mixed train (and eval) datasets of ``states`` (each with ``extra["prepared"]``)."""
    import datasets

    d = config.data
    prepared = [s.extra.pop("prepared") for s in states]
    for s, p in zip(states, prepared):
        s.report, s.from_cache = p.report, p.from_cache
        s.train_examples, s.eval_examples = len(p.train), len(p.eval) if p.eval is not None else 0
    kept_train = [np.arange(s.train_examples, dtype=np.int64) for s in states]
    kept_eval = [np.arange(s.eval_examples, dtype=np.int64) for s in states]
    if d.dedup != "none":
        keys = [(_keys(p, "train", s.train_examples), _keys(p, "eval", s.eval_examples))
                for s, p in zip(states, prepared)]
        for i, (train_mask, eval_mask) in enumerate(dedup(keys, d.dedup)):
            kept_train[i], kept_eval[i] = np.flatnonzero(train_mask), np.flatnonzero(eval_mask)
            states[i].duplicates_removed = int((~train_mask).sum() + (~eval_mask).sum())
    which, where, _ = mix_indices([(s.share, s.amount) for s in states], kept_train, config.seed)
    if d.max_train_samples is not None:
        which, where = which[: d.max_train_samples], where[: d.max_train_samples]
    offsets = np.concatenate([[0], np.cumsum([s.train_examples for s in states])]).astype(np.int64)
    train = datasets.concatenate_datasets([p.train for p in prepared]).select(offsets[which] + where)

    evals = [(i, p.eval.select(kept_eval[i])) for i, p in enumerate(prepared)
             if p.eval is not None and len(kept_eval[i])]
    eval_ds, eval_which = None, np.empty(0, dtype=np.int64)
    if evals:
        eval_ds = datasets.concatenate_datasets([e for _, e in evals])
        eval_which = np.concatenate([np.full(len(e), i, dtype=np.int64) for i, e in evals])
        if d.max_eval_samples is not None and len(eval_ds) > d.max_eval_samples:
            eval_ds, eval_which = eval_ds.select(range(d.max_eval_samples)), eval_which[: d.max_eval_samples]

    report = DataReport(dataset=d.dataset, format=",".join(dict.fromkeys(s.format for s in states)),
                        template=",".join(dict.fromkeys(p.template_name for p in prepared)),
                        train_on=",".join(dict.fromkeys(p.train_on for p in prepared)),
                        tokenization=",".join(dict.fromkeys(p.report.tokenization for p in prepared)))
    report.dedup = d.dedup
    eval_tokens = eval_trained = 0
    for i, (s, p) in enumerate(zip(states, prepared)):
        lengths, trained = token_counts(p.train)
        mine = where[which == i]
        s.mixed, s.mixed_tokens, s.mixed_trained = len(mine), int(lengths[mine].sum()), int(trained[mine].sum())
        s.mixed_eval = int((eval_which == i).sum())
        if s.mixed_eval:
            e_lengths, e_trained = token_counts(p.eval)
            picked = kept_eval[i][: s.mixed_eval]
            eval_tokens += int(e_lengths[picked].sum())
            eval_trained += int(e_trained[picked].sum())
        r = p.report
        report.records_read += r.records_read
        report.conversations += r.conversations
        report.dropped += Counter(r.dropped)
        report.excluded_by_source += r.excluded_by_source
        report.duplicates += r.duplicates
        report.duplicates_removed += s.duplicates_removed
    report.examples = {"train": len(train), **({"eval": len(eval_ds)} if eval_ds is not None else {})}
    report.tokens = {"train": sum(s.mixed_tokens for s in states), **({"eval": eval_tokens} if evals else {})}
    report.trained_tokens = {"train": sum(s.mixed_trained for s in states), **({"eval": eval_trained} if evals else {})}
    report.sources = [s.summary() for s in states]
    total = max(1, report.trained_tokens["train"])
    for row in report.sources:
        row["share_of_trained_tokens"] = round(row["trained_tokens"] / total, 4)
    _merge_rejects(states, report)
    if rejects_dir:
        report.write_rejects(rejects_dir)
    report.content_hash = dataset_content_hash(d.dataset)
    first = prepared[0]
    return PreparedData(train, eval_ds, report, report.format, report.template, first.template, first.train_on,
                        from_cache=all(s.from_cache for s in states), data_fingerprint=report.content_hash,
                        sources=report.sources, source_of=which)
