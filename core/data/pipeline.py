"""config -> records -> conversations -> split -> tokenized examples (with a report).

Each stage is a function that can be called and tested alone; ``prepare_datasets`` runs
them in order and caches the result, keyed by everything that can change it.

Memory stays flat in the number of records: the data is read twice (first to check and
count every record and choose the eval split, keeping a few bytes per conversation; then
to tokenize), examples go to Arrow files as they are made, and rejected records go
straight to a file.
"""

from __future__ import annotations

import json
import shutil

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..config import TrainConfig
from ..errors import ConfigError, DataError, PluginError
from ..fingerprint import dataset_content_hash
from ..lock import FolderLocked
from ..records import record_metadata
from ..types import Conversation, DatasetFormat, Message, Segment, TemplateEntry
from .io import RawRecord, ReadLedger, dataset_sources
from .report import REJECTS_FILE, DataReport
from .split import StratumKeys, content_key
from .tokenize import (Dropped, Tokenized, max_chars_per_token, tokenize_segments_batch,
                       tokenize_source_target_batch)
from .cache import (PREPROCESSED_MARKER, REPORT_FILE, cache_root, check_preprocessed_options, fingerprint,
                    is_preprocessed, load_preprocessed, preprocessed_meta)
from .plan import Plan, PreparedData, resolve_plan

BUILD_DIR = ".build"  # inside a folder being written: the Arrow files examples are appended to


# -- records -> conversations ----------------------------------------------------------------

def _as_conversations(result: Any, raw: RawRecord, fmt: DatasetFormat) -> list[Conversation]:
    if result is None:
        return []
    items = result if isinstance(result, list) else [result]
    for item in items:
        if not isinstance(item, Conversation):
            raise PluginError(f"dataset format {fmt.name!r} (plugin {fmt.plugin}) returned "
                              f"{type(item).__name__} for {raw.location}; converters return Conversation, "
                              "a list of them, or None")
    for item in items:
        record_metadata(raw.record, item.metadata)
    return items


def expand_conversation(conv: Conversation) -> list[Conversation]:
    """One conversation per assistant turn (the seed's ``--expand_conversations``)."""
    msgs = list(conv.messages)
    if len(msgs) <= 3:
        return [conv]
    if msgs[-1].role != "assistant":
        msgs = msgs[:-1]
    expanded = Conversation(msgs, dict(conv.metadata))
    expanded.validate()  # alternation; a failure is reported by the caller
    base_id = conv.metadata.get("id")
    out = []
    for i, m in enumerate(msgs):
        if m.role == "assistant":
            meta = dict(conv.metadata)
            meta["id"] = f"{base_id}-{len(out)}" if base_id is not None else f"turn-{len(out)}"
            out.append(Conversation(msgs[: i + 1], meta))
    return out


def iter_conversations(records: Iterable[RawRecord | DataError], config: TrainConfig, fmt: DatasetFormat,
                       report: DataReport | None) -> Iterator[tuple[Conversation, RawRecord]]:
    """The conversations of ``records`` in order, each with its record. A bad record raises,
    or under --on_bad_record skip is counted in ``report`` and written to its rejects.
    ``report=None`` reads again records that were counted once: nothing is counted."""
    skip_bad = config.data.on_bad_record == "skip"
    sources = None
    if config.data.include_sources.strip().upper() != "ALL":
        sources = {s.strip() for s in config.data.include_sources.split(",") if s.strip()}

    def drop(reason: str, location: str, problem: str, record: Any = None) -> None:
        if report is not None:
            report.drop(reason, location, problem, record)

    for raw in records:
        if report is not None:
            report.records_read += 1
        if isinstance(raw, DataError):  # a line the reader could not parse
            if not skip_bad:
                raise raw
            drop(raw.reason, raw.location, raw.problem)
            continue
        source = raw.record.get("source")
        if sources is not None and (not isinstance(source, str) or source not in sources):
            if report is not None:
                report.excluded_by_source += 1
            continue
        try:
            try:
                convs = _as_conversations(fmt.converter(raw.record), raw, fmt)
            except ValueError as exc:
                raise raw.error(str(exc)) from None
            except PluginError:
                raise
            except Exception as exc:  # noqa: BLE001 - a converter tripping over odd input is still a bad record
                raise raw.error(f"format {fmt.name!r} failed on this record: {type(exc).__name__}: {exc}") from None
            if not convs:
                drop("skipped_by_format", raw.location, f"format {fmt.name!r} skipped the record", raw.record)
                continue
            items = []
            for conv in convs:
                if config.data.expand_conversations:
                    try:
                        expanded = expand_conversation(conv)
                    except ValueError as exc:
                        drop("not_alternating", raw.location, f"cannot expand: {exc}", raw.record)
                        continue
                else:
                    expanded = [conv]
                for item in expanded:
                    try:
                        item.validate()
                    except ValueError as exc:
                        raise raw.error(str(exc)) from None
                    items.append(item)
        except DataError as exc:
            if not skip_bad:
                raise
            drop(exc.reason, exc.location, exc.problem, raw.record)
            continue
        for item in items:
            yield item, raw


def read_conversations(records: Iterable[RawRecord | DataError], config: TrainConfig, fmt: DatasetFormat,
                       report: DataReport) -> list[tuple[Conversation, RawRecord]]:
    """``iter_conversations`` as a list (for a few records: the pipeline streams them)."""
    return list(iter_conversations(records, config, fmt, report))


# -- conversation -> example -------------------------------------------------------------------

class TemplateError(Exception):
    """A prompt template failed on one conversation: a bad record, located by the caller."""


def _apply_template(entry: TemplateEntry, method: str, conv: Conversation, bos: str, eos: str):
    try:
        result = getattr(entry.template, method)(conv, bos_token=bos, eos_token=eos)
    except (ConfigError, PluginError):
        raise
    except ValueError as exc:  # the documented way to refuse a conversation
        raise TemplateError(f"template {entry.name!r} (plugin {entry.plugin}): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a template tripping over odd input is still a bad record
        raise TemplateError(f"template {entry.name!r} (plugin {entry.plugin}) failed on this record: "
                            f"{type(exc).__name__}: {exc}") from None
    if method == "source_target":
        ok = isinstance(result, (tuple, list)) and len(result) == 2 and all(isinstance(x, str) for x in result)
        expected = "a (source, target) pair of strings"
    else:
        ok = isinstance(result, (tuple, list)) and all(isinstance(x, Segment) for x in result)
        expected = "a list of Segment"
    if not ok:
        raise PluginError(f"template {entry.name!r} (plugin {entry.plugin}): {method}() returned "
                          f"{type(result).__name__}; it must return {expected}")
    return result


def _render(plan: Plan, conv: Conversation, bos: str, eos: str):
    """What the tokenizer gets for ``conv``: a (source, target) pair for the reference
    tokenization, else the list of segments. Raises TemplateError."""
    method = "source_target" if plan.tokenization == "reference" else "render"
    return _apply_template(plan.template, method, conv, bos, eos)


def tokenize_rendered(tokenizer, plan: Plan, rendered: list, config: TrainConfig, *,
                      chars_per_token: int | None = None) -> list[Tokenized | Dropped]:
    """Examples (or the ``Dropped`` ruling each out) for many rendered conversations, in one
    batched tokenizer call per text kind."""
    data = config.data
    common = dict(model_max_len=data.model_max_len, skip_excess_length=data.skip_excess_length,
                  train_on_source=data.train_on_source, chars_per_token=chars_per_token)
    if plan.tokenization == "reference":
        return tokenize_source_target_batch(tokenizer, rendered, **common)
    return tokenize_segments_batch(tokenizer, rendered, mode=plan.train_on, **common)


def tokenize_conversation(tokenizer, plan: Plan, conv: Conversation, config: TrainConfig, *,
                          chars_per_token: int | None = None) -> Tokenized:
    """One example. Raises Dropped (a length or labels rule) or TemplateError (the template
    failed on this conversation). ``chars_per_token``: see ``tokenize.max_chars_per_token``."""
    rendered = _render(plan, conv, tokenizer.bos_token or "", tokenizer.eos_token or "")
    (result,) = tokenize_rendered(tokenizer, plan, [rendered], config, chars_per_token=chars_per_token)
    if isinstance(result, Dropped):
        raise result
    return result


def _features():
    import datasets

    return datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                              "labels": datasets.Sequence(datasets.Value("int32"))})


class _SplitWriter:
    """One split's examples, appended to an Arrow file as they are made, in record batches of
    about ``BATCH_BYTES`` (a reader that memory-maps the file then touches little more than
    the batches it reads: with small batches, the pages faulted in around each batch header
    cover most of the file)."""

    BATCH_BYTES = 4 << 20

    def __init__(self, path: Path, limit: int | None):
        from datasets.arrow_writer import ArrowWriter

        self.path, self.limit = path, limit
        self.examples = self.tokens = self.trained = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = ArrowWriter(features=_features(), path=str(path))
        self._pending: list = []  # Arrow tables of examples not written yet (int32, compact)
        self._pending_bytes = 0

    @property
    def full(self) -> bool:
        return self.limit is not None and self.examples >= self.limit

    def add(self, examples: list[Tokenized]) -> None:
        if not examples:
            return
        import pyarrow as pa

        ints = pa.list_(pa.int32())
        table = pa.table({"input_ids": pa.array([e.input_ids for e in examples], type=ints),
                          "labels": pa.array([e.labels for e in examples], type=ints)})
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        if self._pending_bytes >= self.BATCH_BYTES:
            self._write_pending()
        self.examples += len(examples)
        self.tokens += sum(len(e.input_ids) for e in examples)
        self.trained += sum(e.trained for e in examples)

    def _write_pending(self) -> None:
        import pyarrow as pa

        if self._pending:
            table = pa.concat_tables(self._pending)
            self._writer.write_table(table, writer_batch_size=max(1, table.num_rows))  # one record batch
        self._pending, self._pending_bytes = [], 0

    def finalize(self) -> None:
        """Write what is left and close the file (its examples can be read from ``path``)."""
        self._write_pending()
        self._writer.finalize()

    def close(self) -> None:
        self._pending = []
        self._writer.close()


# -- the whole pipeline ------------------------------------------------------------------------------

_SCRATCH: Path | None = None


def _scratch_dir() -> Path:
    """A new folder for examples that have no other home (cache off or unwritable), under one
    temporary folder removed when the process exits (training memory-maps the files)."""
    global _SCRATCH
    import atexit
    import tempfile

    if _SCRATCH is None or not _SCRATCH.is_dir():
        _SCRATCH = Path(tempfile.mkdtemp(prefix="airo-data-"))
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return Path(tempfile.mkdtemp(dir=_SCRATCH))


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


def write_examples(config: TrainConfig, tokenizer, plan: Plan, workdir: str | Path,
                   arrow_path: Callable[[str], Path]) -> tuple[dict[str, Path], DataReport]:
    """``build_examples`` without opening what it wrote: {split: its Arrow file} (the file
    ``arrow_path(split)``; an eval split whose every record was dropped is removed, not
    listed) and the report. ``workdir`` holds the rejects spool."""
    d = config.data
    if not d.dataset:
        raise ConfigError("--dataset is required")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report = DataReport(dataset=d.dataset, format=plan.fmt.name, template=plan.template.name,
                        train_on=plan.trained, tokenization=plan.tokenization)
    report.spool_rejects(workdir / REJECTS_FILE)
    writers: dict[str, _SplitWriter] = {}
    try:
        ledger = ReadLedger()  # every byte the passes read, hashed as it is read
        sources = dataset_sources(d.dataset, ledger)
        own_eval = next((sources[name] for name in ("eval", "validation", "test") if name in sources), None)
        passes = _one_pass if own_eval is None and d.eval_dataset_size == 0 else _two_passes
        passes(config, tokenizer, plan, report, arrow_path, sources, own_eval, writers)
        report.content_hash = ledger.content_hash(d.dataset)
        if report.records_read == 0:
            raise DataError("the dataset has no records", path=d.dataset, reason="empty_dataset")
        for split, writer in writers.items():
            report.examples[split] = writer.examples
            report.tokens[split] = writer.tokens
            report.trained_tokens[split] = writer.trained
            writer.finalize()
    finally:
        for writer in writers.values():
            writer.close()
        report.close_spool()
    files = {split: writer.path for split, writer in writers.items()}
    if "eval" in files and not writers["eval"].examples:
        # every eval record dropped: no eval split (a saved empty one cannot be loaded)
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


def _one_pass(config: TrainConfig, tokenizer, plan: Plan, report: DataReport, arrow_path: Callable[[str], Path],
              sources: dict[str, Any], own_eval: Any, writers: dict[str, "_SplitWriter"]) -> None:
    """No eval split to choose: one pass converts, checks, counts and tokenizes into
    ``writers["train"]``. Records past --max_train_samples are still checked and counted."""
    writers["train"] = _SplitWriter(arrow_path("train"), config.data.max_train_samples)
    maker = _ExampleMaker(config, tokenizer, plan, report)
    contents = StratumKeys()  # for the report's count of duplicates
    for conv, raw in iter_conversations(sources["train"](), config, plan.fmt, report):
        report.conversations += 1
        contents.add({}, content_key(conv))
        if not writers["train"].full:
            maker.add(writers["train"], conv, raw)
    maker.flush()
    report.duplicates = contents.duplicates


def _two_passes(config: TrainConfig, tokenizer, plan: Plan, report: DataReport, arrow_path: Callable[[str], Path],
                sources: dict[str, Any], own_eval: Any, writers: dict[str, "_SplitWriter"]) -> None:
    """The first pass converts and checks every record and keeps what the eval split needs of
    each conversation (its category and source); the second converts again and tokenizes each
    conversation into ``writers[its split]``."""
    d = config.data
    # First pass: count, check, and choose the eval split.
    keys = StratumKeys()
    record, last = -1, None
    for conv, raw in iter_conversations(sources["train"](), config, plan.fmt, report):
        if raw is not last:  # the conversations of one record (its expansions) are one group
            record, last = record + 1, raw
        keys.add(conv.metadata, content_key(conv), record)
    report.duplicates = keys.duplicates
    eval_indices: list[int] = []
    if own_eval is not None:
        eval_size = sum(1 for _ in iter_conversations(own_eval(), config, plan.fmt, report))
        report.conversations = len(keys) + eval_size
    else:
        eval_indices, report.stratified_by = keys.split(d.eval_dataset_size, config.seed)
        eval_size = len(eval_indices)
        report.conversations = len(keys)
    # Second pass: tokenize into the split each conversation belongs to.
    writers["train"] = _SplitWriter(arrow_path("train"), d.max_train_samples)
    if eval_size:
        writers["eval"] = _SplitWriter(arrow_path("eval"), d.max_eval_samples)
    maker = _ExampleMaker(config, tokenizer, plan, report)
    if own_eval is None:
        evals, last_eval = set(eval_indices), (eval_indices[-1] if eval_indices else -1)
        for j, (conv, raw) in enumerate(iter_conversations(sources["train"](), config, plan.fmt, None)):
            maker.add(writers["eval" if j in evals else "train"], conv, raw)
            if writers["train"].full and (j >= last_eval or writers["eval"].full):
                break
    else:
        for split, source in (("train", sources["train"]), ("eval", own_eval)):
            if split not in writers:
                continue
            for conv, raw in iter_conversations(source(), config, plan.fmt, None):
                if writers[split].full:
                    break
                maker.add(writers[split], conv, raw)
            maker.flush()
    maker.flush()


CHUNK = 512  # conversations rendered, then tokenized in one batched call


class _ExampleMaker:
    """Conversations in, examples out to their split's writer, in order: gathered into
    chunks so the tokenizer runs once per chunk (in parallel threads for a fast tokenizer)
    instead of once per text. A conversation ruled out is counted as dropped; a template
    failure is a bad record. Nothing is written to a split past its limit."""

    def __init__(self, config: TrainConfig, tokenizer, plan: Plan, report: DataReport):
        self.config, self.tokenizer, self.plan, self.report = config, tokenizer, plan, report
        self.chars_per_token = max_chars_per_token(tokenizer)
        self.skip_bad = config.data.on_bad_record == "skip"
        self.pending: list[tuple[_SplitWriter, Conversation, RawRecord]] = []

    def add(self, writer: _SplitWriter, conv: Conversation, raw: RawRecord) -> None:
        self.pending.append((writer, conv, raw))
        if len(self.pending) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        bos, eos = self.tokenizer.bos_token or "", self.tokenizer.eos_token or ""
        outcomes: list[Any] = []  # rendered input, or the TemplateError
        for _, conv, _ in pending:
            try:
                outcomes.append(_render(self.plan, conv, bos, eos))
            except TemplateError as exc:
                outcomes.append(exc)
        rendered = [o for o in outcomes if not isinstance(o, TemplateError)]
        made = iter(tokenize_rendered(self.tokenizer, self.plan, rendered, self.config,
                                      chars_per_token=self.chars_per_token))
        batch: dict[int, list[Tokenized]] = {}
        writers: dict[int, _SplitWriter] = {}
        for (writer, _, raw), outcome in zip(pending, outcomes):
            result = outcome if isinstance(outcome, TemplateError) else next(made)
            if writer.limit is not None and writer.examples + len(batch.get(id(writer), ())) >= writer.limit:
                continue
            if isinstance(result, Tokenized):
                batch.setdefault(id(writer), []).append(result)
                writers[id(writer)] = writer
            elif isinstance(result, Dropped):
                self.report.drop(result.reason, raw.location, result.detail, raw.record)
            elif not self.skip_bad:
                raise raw.error(str(result), reason="template_error") from None
            else:
                self.report.drop("template_error", raw.location, str(result), raw.record)
        for key, examples in batch.items():
            writers[key].add(examples)


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


SHARD = "data-00000-of-00001.arrow"  # a saved split's one Arrow file, named as save_to_disk names it


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
    _save_layout(folder, files)
    if report.copy_rejects(folder / REJECTS_FILE):
        report.rejects_file = REJECTS_FILE  # relative: the folder may move
    (folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    (folder / PREPROCESSED_MARKER).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder / BUILD_DIR, ignore_errors=True)
    return report


def _save_layout(folder: Path, files: dict[str, Path]) -> None:
    """The JSON files ``save_to_disk`` writes beside the Arrow files of ``files`` (each
    ``folder/SPLIT/SHARD``): dataset_dict.json, and each split's state.json (the dataset's
    state: no format, no split name, a fresh fingerprint) and dataset_info.json (its
    features). A split folder without a file (an eval split left empty) is removed."""
    import datasets
    from datasets.fingerprint import generate_random_fingerprint
    from datasets.utils.py_utils import asdict  # save_to_disk's (it leaves out unset fields)

    for split in ("train", "eval"):
        if split not in files and (folder / split).is_dir():
            shutil.rmtree(folder / split)
    (folder / datasets.config.DATASETDICT_JSON_FILENAME).write_text(json.dumps({"splits": list(files)}),
                                                                    encoding="utf-8")
    for split, path in files.items():
        assert path == folder / split / SHARD, path
        state = {"_data_files": [{"filename": SHARD}], "_fingerprint": generate_random_fingerprint(),
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                 "_output_all_columns": False, "_split": None}
        (path.parent / datasets.config.DATASET_STATE_JSON_FILENAME).write_text(
            json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        info = asdict(datasets.DatasetInfo(features=_features()))
        (path.parent / datasets.config.DATASET_INFO_FILENAME).write_text(
            json.dumps({key: info[key] for key in sorted(info)}, indent=2), encoding="utf-8")


def prepare_datasets(config: TrainConfig, tokenizer, *, rejects_dir: str | None = None,
                     use_cache: bool = True) -> PreparedData:
    """Tokenized train (and eval) datasets for ``config``, from the cache when nothing changed.

    The datasets are memory-mapped Arrow files: in the cache, or (cache off or not writable)
    in a temporary folder removed when the process exits. ``rejects_dir`` gets
    ``rejects.jsonl``, also when the data leaves no training example (the error names it).
    """
    import warnings

    from ..atomic import atomic_directory

    d = config.data
    if is_preprocessed(d.dataset):
        # Memory-mapped for training, not read here: its hash is of the folder's files now.
        check_preprocessed_options(d.dataset, config)
        prepared = load_preprocessed(d.dataset, tokenizer)
        prepared.data_fingerprint = prepared.report.content_hash = dataset_content_hash(d.dataset)
        if rejects_dir:
            prepared.report.write_rejects(rejects_dir)
        return prepared
    plan = resolve_plan(config)
    rejects_on_error = Path(rejects_dir) / REJECTS_FILE if rejects_dir else None
    root = cache_root(config) if use_cache else None
    if root is not None:
        # The key hashes the data before it is read; a build checks the data as read against
        # it (build_folder), and a hit reads nothing: the key's hash is what it was built from.
        data_hash = dataset_content_hash(d.dataset)
        folder = root / fingerprint(config, plan, tokenizer, data_hash=data_hash)
        hit = (folder / PREPROCESSED_MARKER).is_file()
        if not hit:
            try:
                with atomic_directory(folder, kind="dataset cache", markers=(PREPROCESSED_MARKER,),
                                      what="dataset cache folder") as tmp:
                    build_folder(tmp, config, tokenizer, plan,
                                  preprocessed_meta(config, plan, tokenizer, fingerprint=folder.name, data_fingerprint=data_hash),
                                  rejects_on_error)
            except (OSError, FolderLocked) as exc:
                # a read-only or full cache, or another run writing the same entry right now,
                # costs a private copy, not the run
                warnings.warn(f"could not cache the tokenized dataset in {root}: {exc}")
                root = None
        if root is not None:
            prepared = load_preprocessed(folder, tokenizer)
            prepared.from_cache = hit
            prepared.template = plan.template.template
            prepared.data_fingerprint = prepared.report.content_hash = data_hash
            prepared.report.dataset = d.dataset  # keyed by content: the same data may have been elsewhere
            prepared.report.rejects_file = None
            if rejects_dir:
                prepared.report.write_rejects(rejects_dir)
            return prepared
    splits, report = _build(config, tokenizer, plan, _scratch_dir(), rejects_on_error)
    if rejects_dir:
        report.write_rejects(rejects_dir)
    return PreparedData(splits["train"], splits.get("eval"), report, plan.fmt.name, plan.template.name,
                        plan.template.template, plan.trained, data_fingerprint=report.content_hash)


__all__ = ["Message", "Plan", "PreparedData", "TemplateError", "build_examples",
           "expand_conversation", "iter_conversations", "load_preprocessed",
           "prepare_datasets", "read_conversations", "resolve_plan",
           "tokenize_conversation", "tokenize_rendered"]
