"""config -> sources -> (per source: records -> conversations -> split -> examples) -> mix.

Each stage is a module that can be called and tested alone: reading (``io``), converting
(``convert``), the passes over a source (``passes``), rendering and tokenizing (``render``,
``maker``), writing (``writer``), caching (``cache``), mixing (``mix``, ``assemble``).
``prepare_datasets`` runs them in order; each source is cached on its own, keyed by its
content and everything that can change its examples, so changing one source's share of
the mix re-mixes without re-tokenizing, and editing one file re-tokenizes that source.

Memory stays flat in the number of records: the data is read twice (first to check and
count every record and choose the eval split, keeping a few bytes per conversation; then
to tokenize), examples go to Arrow files as they are made, and rejected records go
straight to a file.
"""

from __future__ import annotations

import json
import shutil

from pathlib import Path
from typing import Any, Callable

from ..config import TrainConfig
from ..errors import ConfigError, DataError
from ..fingerprint import dataset_content_hash
from ..lock import FolderLocked
from ..types import Message
from .cache import (PREPROCESSED_MARKER, REPORT_FILE, cache_root, check_preprocessed_options, fingerprint,
                    is_preprocessed, load_preprocessed, preprocessed_meta)
from .convert import expand_conversation, iter_conversations, read_conversations
from .io import ReadLedger, dataset_sources
from .maker import ExampleMaker, workers_for
from .passes import _one_pass, _two_passes
from .paths import BUILD_DIR, SHARD, scratch_dir as _scratch_dir
from .plan import Plan, PreparedData, resolve_plan
from .render import TemplateError, tokenize_conversation, tokenize_rendered
from .report import REJECTS_FILE, DataReport
from .sources import SourceState, resolve_sources
from .writer import _SplitWriter, keys_path, save_layout

CHUNK = 512  # conversations rendered, then tokenized in one batched call


def _ExampleMaker(config: TrainConfig, tokenizer, plans, report: DataReport) -> ExampleMaker:
    """The passes' example maker, with this module's tokenizer function and chunk size (so a
    test can replace either) and --preprocessing_num_workers processes."""
    plans = plans if isinstance(plans, list) else [plans]
    return ExampleMaker(config, tokenizer, plans, report, tokenize=tokenize_rendered, chunk=CHUNK,
                        workers=workers_for(config), choice=plans[0].choice)


def build_examples(config: TrainConfig, tokenizer, plan: Plan,
                   workdir: str | Path | None = None) -> tuple[dict[str, Any], DataReport]:
    """{"train": Dataset, "eval": Dataset (when there is an eval split)} and the report.

    The examples are Arrow files in ``workdir`` (default: a temporary folder), memory-mapped;
    every rejected record is in ``workdir/rejects.jsonl``. Without an eval split the data is
    read once; with one it is read twice (see :func:`_two_passes`), so the split of a dataset
    of any size never holds its records.
    """
    import datasets

    workdir = Path(workdir) if workdir is not None else _scratch_dir()
    files, report = write_examples(config, tokenizer, plan, workdir, lambda split: workdir / f"{split}.arrow")
    return {split: datasets.Dataset.from_file(str(path)) for split, path in files.items()}, report



def write_examples(config: TrainConfig, tokenizer, plan: Plan | list[Plan], workdir: str | Path,
                   arrow_path: Callable[[str], Path]) -> tuple[dict[str, Path], DataReport]:
    """``build_examples`` without opening what it wrote: {split: its Arrow file} (the file
    ``arrow_path(split)``; an eval split whose every record was dropped is removed, not
    listed) and the report. ``workdir`` holds the rejects spool."""
    d = config.data
    if not d.dataset:
        raise ConfigError("--dataset is required")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    plans = plan if isinstance(plan, list) else [plan]
    first = plans[0]
    report = DataReport(dataset=d.dataset, format=first.fmt.name, template=",".join(p.template.name for p in plans),
                        train_on=first.trained, tokenization=",".join(dict.fromkeys(p.tokenization for p in plans)))
    report.spool_rejects(workdir / REJECTS_FILE)
    writers: dict[str, _SplitWriter] = {}
    makers: list[ExampleMaker] = []  # their worker processes end with the passes, however they end

    def new_maker(*args) -> ExampleMaker:
        makers.append(_ExampleMaker(*args))
        return makers[-1]

    try:
        ledger = ReadLedger()  # every byte the passes read, hashed as it is read
        sources = _chosen_split(dataset_sources(d.dataset, ledger), first, d.dataset)
        own_eval = next((sources[name] for name in ("eval", "validation", "test") if name in sources), None)
        passes = _one_pass if own_eval is None and d.eval_dataset_size == 0 else _two_passes
        passes(config, tokenizer, plans, report, arrow_path, sources, own_eval, writers, new_maker)
        report.content_hash = ledger.content_hash(d.dataset)
        if report.records_read == 0:
            raise DataError("the dataset has no records", path=d.dataset, reason="empty_dataset")
        for split, writer in writers.items():
            report.examples[split] = writer.examples
            report.tokens[split] = writer.tokens
            report.trained_tokens[split] = writer.trained
            writer.finalize()
    finally:
        for maker in makers:
            maker.close()
        for writer in writers.values():
            writer.close()
        report.close_spool()
    files = {split: writer.path for split, writer in writers.items()}
    if "eval" in files and not writers["eval"].examples:
        # every eval record dropped: no eval split (a saved empty one cannot be loaded)
        keys_path(files["eval"]).unlink(missing_ok=True)
        files.pop("eval").unlink(missing_ok=True)
    if not report.examples["train"]:
        first = "; ".join(f"{r['location']}: {r['problem']}" for r in report.rejects[:3])
        error = DataError(f"no training examples left: {report.records_read} records read, dropped "
                          f"{dict(report.dropped) or 'none'}, excluded by --include_sources "
                          f"{report.excluded_by_source}" + (f". First drops: {first}" if first else ""),
                          path=d.dataset, reason="empty_dataset")
        error.report = report  # so the caller can still write rejects.jsonl
        raise error
    return files, report


def _chosen_split(sources: dict[str, Any], plan: Plan, label: str) -> dict[str, Any]:
    """The source's splits as the passes read them: ``split:`` (a saved or Hub dataset's split
    to train on, its own eval split then unused) and ``max_records:`` (the first N records)."""
    if plan.split is not None:
        if plan.split not in sources:
            raise DataError(f"the dataset has no {plan.split!r} split (it has: {', '.join(sources)})", path=label,
                            reason="unreadable_file")
        sources = {"train": sources[plan.split]}
    if plan.max_records is not None:
        import itertools

        limit = plan.max_records
        sources = {name: (lambda read=read: itertools.islice(read(), limit)) for name, read in sources.items()}
    return sources


def _build(config: TrainConfig, tokenizer, plan: Plan, workdir: Path, rejects_on_error: Path | None,
           arrow_path: Callable[[str], Path] | None = None):
    """``build_examples`` (or, given ``arrow_path``, ``write_examples``); when it fails with
    rejects to show (no training example left), they are first copied to the file
    ``rejects_on_error``, which the error then names."""
    try:
        if arrow_path is not None:
            return write_examples(config, tokenizer, plan, workdir, arrow_path)
        return build_examples(config, tokenizer, plan, workdir)
    except DataError as exc:
        report = getattr(exc, "report", None)
        written = report.copy_rejects(rejects_on_error) if report is not None and rejects_on_error else None
        if written is None:
            raise
        error = DataError(f"{exc.problem}. Every rejected record, with the reason: {written}", path=exc.path,
                          line=exc.line, index=exc.index, reason=exc.reason)
        error.report = report
        raise error from None


def check_read_as_hashed(dataset: str | None, hashed: str | None, read: str | None) -> None:
    """The data as read (``DataReport.content_hash``) against a hash of it taken before the
    read (the cache key's, a preprocessed folder's record, a checkpoint's): the read is the
    truth, and a difference means the files changed in between (while the run started), so
    what was built is not what the earlier hash stands for."""
    if hashed is not None and read != hashed:
        raise DataError(f"the dataset changed while airo was reading it (sha256 {hashed[:12]}… before the read, "
                        f"{(read or 'none')[:12]}… as read); run again once nothing writes to it", path=dataset,
                        reason="changed_during_read")



def build_folder(folder: Path, config: TrainConfig, tokenizer, plan: Plan, meta: dict[str, Any],
                  rejects_on_error: Path | None) -> DataReport:
    """Build the examples into ``folder`` (the temporary side of ``atomic_directory``): the
    saved splits, report, rejects and marker.

    Each split's examples are written straight to its Arrow file in the layout of
    ``datasets.DatasetDict.save_to_disk`` (``load_from_disk`` reads it), never opened here:
    saving an opened (memory-mapped) build file would read every page of it back into this
    process (its resident memory grew by the size of the examples, 0.7 GB for 300 MB of
    JSON Lines)."""
    files, report = _build(config, tokenizer, plan, folder / BUILD_DIR, rejects_on_error,
                           arrow_path=lambda split: folder / split / SHARD)
    check_read_as_hashed(config.data.dataset, meta.get("data_fingerprint"), report.content_hash)
    save_layout(folder, files)
    if report.copy_rejects(folder / REJECTS_FILE):
        report.rejects_file = REJECTS_FILE  # relative: the folder may move
    (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    (folder / PREPROCESSED_MARKER).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder / BUILD_DIR, ignore_errors=True)
    return report



def _screen(config: TrainConfig):
    """(the decontamination index, its cache key), or (None, None) without --decontaminate."""
    files = [p.strip() for p in (config.data.decontaminate or "").split(",") if p.strip()]
    if not files:
        return None, None
    from .decontaminate import load_benchmark_questions

    index = load_benchmark_questions(files)
    return index, json.dumps([dataset_content_hash(",".join(files)), index.describe()], sort_keys=True, default=str)


def _plans(config: TrainConfig, state: SourceState, screen) -> list[Plan]:
    from .plan import resolve_plans

    plans = resolve_plans(config, state.templates)
    for plan in plans:
        plan.screen, plan.choice, plan.split, plan.max_records = screen, state.template_choice, state.split, \
            state.max_records
    return plans


def _cached_build(config: TrainConfig, tokenizer, plans: list[Plan], root: Path | None, screen_key,
                  rejects_on_error: Path | None) -> tuple[Path | None, bool, str | None]:
    """(the source's folder in the cache, whether it was there already, the data hash), or
    (None, False, hash) when the cache is off or cannot be written."""
    import warnings

    from ..atomic import atomic_directory

    d = config.data
    data_hash = dataset_content_hash(d.dataset)
    if root is None:
        return None, False, data_hash
    # The key hashes the data before it is read; a build checks the data as read against
    # it (build_folder), and a hit reads nothing: the key's hash is what it was built from.
    folder = root / fingerprint(config, plans, tokenizer, data_hash=data_hash, screen=screen_key)
    hit = (folder / PREPROCESSED_MARKER).is_file()
    if not hit:
        try:
            with atomic_directory(folder, kind="dataset cache", markers=(PREPROCESSED_MARKER,),
                                  what="dataset cache folder") as tmp:
                build_folder(tmp, config, tokenizer, plans,
                             preprocessed_meta(config, plans[0], tokenizer, fingerprint=folder.name,
                                               data_fingerprint=data_hash), rejects_on_error)
        except (OSError, FolderLocked) as exc:
            # a read-only or full cache, or another run writing the same entry right now,
            # costs a private copy, not the run
            warnings.warn(f"could not cache the tokenized dataset in {root}: {exc}")
            return None, False, data_hash
    return folder, hit, data_hash


def _from_folder(folder: Path, tokenizer, plans: list[Plan], hit: bool, data_hash, label: str,
                 rejects_dir: str | None) -> PreparedData:
    prepared = load_preprocessed(folder, tokenizer)
    prepared.from_cache = hit
    prepared.template = plans[0].template.template
    prepared.data_fingerprint = prepared.report.content_hash = data_hash
    prepared.report.dataset = label  # keyed by content: the same data may have been elsewhere
    prepared.report.rejects_file = None
    if rejects_dir:
        prepared.report.write_rejects(rejects_dir)
    prepared.folder = folder
    return prepared


def prepare_source(config: TrainConfig, tokenizer, plans: list[Plan], *, screen_key=None, rejects_dir=None,
                   use_cache: bool = True) -> PreparedData:
    """One source's tokenized train (and eval) datasets, from the cache when nothing that
    changes them changed. ``config`` is the source's (``SourceState.source_config``)."""
    d = config.data
    rejects_on_error = Path(rejects_dir) / REJECTS_FILE if rejects_dir else None
    root = cache_root(config) if use_cache else None
    folder, hit, data_hash = _cached_build(config, tokenizer, plans, root, screen_key, rejects_on_error)
    if folder is not None:
        return _from_folder(folder, tokenizer, plans, hit, data_hash, d.dataset, rejects_dir)
    folder = _scratch_dir() / "source"
    meta = preprocessed_meta(config, plans[0], tokenizer, data_fingerprint=data_hash)
    folder.mkdir(parents=True)
    build_folder(folder, config, tokenizer, plans, meta, rejects_on_error)
    return _from_folder(folder, tokenizer, plans, False, data_hash, d.dataset, rejects_dir)


def prepare_datasets(config: TrainConfig, tokenizer, *, rejects_dir: str | None = None,
                     use_cache: bool = True) -> PreparedData:
    """Tokenized train (and eval) datasets for ``config``, from the cache when nothing changed.

    The datasets are memory-mapped Arrow files: in the cache, or (cache off or not writable)
    in a temporary folder removed when the process exits. ``rejects_dir`` gets
    ``rejects.jsonl``, also when the data leaves no training example (the error names it).
    Several sources (``datasets:``) are prepared one by one (each cached on its own) and
    mixed (:mod:`airo.core.data.assemble`); ``PreparedData.sources`` says what each gave.
    """
    d = config.data
    if not d.datasets and is_preprocessed(d.dataset):
        # Memory-mapped for training, not read here: its hash is of the folder's files now.
        check_preprocessed_options(d.dataset, config)
        prepared = load_preprocessed(d.dataset, tokenizer)
        prepared.data_fingerprint = prepared.report.content_hash = dataset_content_hash(d.dataset)
        if rejects_dir:
            prepared.report.write_rejects(rejects_dir)
        return prepared
    if not d.dataset:
        raise ConfigError("--dataset is required")
    states = resolve_sources(config)
    screen, screen_key = _screen(config)
    alone = len(states) == 1 and states[0].share == "weight" and d.dedup == "none"
    if alone:  # one source, as it is: no mix
        state = states[0]
        source_config = state.source_config(config, alone=True)
        plans = _plans(source_config, state, screen)
        return _single(source_config, tokenizer, plans, screen_key, rejects_dir, use_cache)
    from .assemble import assemble

    for state in states:
        if is_preprocessed(state.path):
            raise ConfigError(f"{state.label}: {state.path} is an `airo preprocess` output; a mix reads the "
                              "sources themselves (each is cached on its own)")
        source_config = state.source_config(config, alone=False)
        plans = _plans(source_config, state, screen)
        state.extra["prepared"] = prepare_source(source_config, tokenizer, plans, screen_key=screen_key,
                                                 use_cache=use_cache)
    return assemble(config, states, rejects_dir)


def _single(config: TrainConfig, tokenizer, plans: list[Plan], screen_key, rejects_dir, use_cache) -> PreparedData:
    rejects_on_error = Path(rejects_dir) / REJECTS_FILE if rejects_dir else None
    root = cache_root(config) if use_cache else None
    folder, hit, data_hash = _cached_build(config, tokenizer, plans, root, screen_key, rejects_on_error)
    if folder is not None:
        return _from_folder(folder, tokenizer, plans, hit, data_hash, config.data.dataset, rejects_dir)
    splits, report = _build(config, tokenizer, plans, _scratch_dir(), rejects_on_error)
    if rejects_dir:
        report.write_rejects(rejects_dir)
    plan = plans[0]
    return PreparedData(splits["train"], splits.get("eval"), report, plan.fmt.name, report.template,
                        plan.template.template, plan.trained, data_fingerprint=report.content_hash)


__all__ = ["Message", "Plan", "PreparedData", "TemplateError", "build_examples",
           "expand_conversation", "iter_conversations", "load_preprocessed",
           "prepare_datasets", "prepare_source", "read_conversations", "resolve_plan",
           "tokenize_conversation", "tokenize_rendered"]
