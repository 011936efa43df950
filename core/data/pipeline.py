"""config -> records -> conversations -> split -> tokenized examples (with a report).

Each stage is a function that can be called and tested alone; ``prepare_datasets`` runs
them in order and caches the result, keyed by everything that can change it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..config import TrainConfig
from ..errors import ConfigError, DataError, PluginError
from ..types import Conversation, DatasetFormat, Message, TemplateEntry
from .io import RawRecord, open_dataset
from .report import REJECTS_FILE, DataReport
from .split import split_indices
from .tokenize import Dropped, Tokenized, tokenize_segments, tokenize_source_target

PREPROCESSED_MARKER = "airo_preprocessed.json"
REPORT_FILE = "report.json"
CACHE_VERSION = 1


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset
    eval: Any | None
    report: DataReport
    format_name: str
    template_name: str
    template: Any
    train_on: str
    from_cache: bool = False


@dataclass
class Plan:
    """What the config resolves to, before any data is read."""

    fmt: DatasetFormat
    template: TemplateEntry
    train_on: str  # last_reply | all_replies
    tokenization: str  # reference | whole
    train_on_source: bool = False

    @property
    def trained(self) -> str:
        """What the report and the run summary call the training signal."""
        return "everything" if self.train_on_source else self.train_on


def resolve_plan(config: TrainConfig) -> Plan:
    from ..plugins import get_registry

    registry = get_registry()
    fmt = registry.get("formats", config.data.dataset_format)
    template_name = config.data.prompt_template or fmt.default_template
    if not template_name:
        raise ConfigError(f"dataset format {fmt.name!r} has no default prompt template; pass --prompt_template")
    template = registry.get("templates", template_name)
    has_reference = callable(getattr(template.template, "source_target", None))
    train_on = config.data.train_on
    if train_on == "auto":
        train_on = "last_reply" if has_reference else "all_replies"
    tokenization = "reference" if (has_reference and train_on == "last_reply") else "whole"
    return Plan(fmt, template, train_on, tokenization, config.data.train_on_source)


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
        for key in ("category", "source", "id"):
            if key not in item.metadata and raw.record.get(key) not in (None, ""):
                item.metadata[key] = raw.record[key]
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


def read_conversations(records: Iterable[RawRecord], config: TrainConfig, fmt: DatasetFormat,
                       report: DataReport) -> list[tuple[Conversation, RawRecord]]:
    skip_bad = config.data.on_bad_record == "skip"
    sources = None
    if config.data.include_sources.strip().upper() != "ALL":
        sources = {s.strip() for s in config.data.include_sources.split(",") if s.strip()}
    out: list[tuple[Conversation, RawRecord]] = []
    for raw in records:
        report.records_read += 1
        if isinstance(raw, DataError):  # a line the reader could not parse
            if not skip_bad:
                raise raw
            report.drop(raw.reason, raw.location, raw.problem)
            continue
        source = raw.record.get("source")
        if sources is not None and (not isinstance(source, str) or source not in sources):
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
                report.drop("skipped_by_format", raw.location, f"format {fmt.name!r} skipped the record",
                            raw.record)
                continue
            for conv in convs:
                if config.data.expand_conversations:
                    try:
                        expanded = expand_conversation(conv)
                    except ValueError as exc:
                        report.drop("not_alternating", raw.location, f"cannot expand: {exc}", raw.record)
                        continue
                else:
                    expanded = [conv]
                for item in expanded:
                    try:
                        item.validate()
                    except ValueError as exc:
                        raise raw.error(str(exc)) from None
                    out.append((item, raw))
        except DataError as exc:
            if not skip_bad:
                raise
            report.drop(exc.reason, exc.location, exc.problem, raw.record)
    return out


# -- conversation -> example -------------------------------------------------------------------

def tokenize_conversation(tokenizer, plan: Plan, conv: Conversation, config: TrainConfig) -> Tokenized:
    template = plan.template.template
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    data = config.data
    if plan.tokenization == "reference":
        source, target = template.source_target(conv, bos_token=bos, eos_token=eos)
        return tokenize_source_target(tokenizer, source, target, model_max_len=data.model_max_len,
                                      skip_excess_length=data.skip_excess_length,
                                      train_on_source=data.train_on_source)
    segments = template.render(conv, bos_token=bos, eos_token=eos)
    return tokenize_segments(tokenizer, segments, mode=plan.train_on, model_max_len=data.model_max_len,
                             skip_excess_length=data.skip_excess_length, train_on_source=data.train_on_source)


def _tokenize_split(tokenizer, plan: Plan, items, config: TrainConfig, report: DataReport, split: str,
                    limit: int | None):
    input_ids, labels = [], []
    tokens = trained = 0
    for conv, raw in items:
        if limit is not None and len(input_ids) >= limit:
            break
        try:
            example = tokenize_conversation(tokenizer, plan, conv, config)
        except Dropped as exc:
            report.drop(exc.reason, raw.location, exc.detail, raw.record)
            continue
        except ValueError as exc:  # a template refusing a conversation
            if config.data.on_bad_record != "skip":
                raise raw.error(f"template {plan.template.name!r}: {exc}") from None
            report.drop("template_error", raw.location, str(exc), raw.record)
            continue
        input_ids.append(example.input_ids)
        labels.append(example.labels)
        tokens += len(example.input_ids)
        trained += example.trained
    report.examples[split] = len(input_ids)
    report.tokens[split] = tokens
    report.trained_tokens[split] = trained
    return {"input_ids": input_ids, "labels": labels}


def _to_dataset(columns: dict[str, list]):
    import datasets

    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "labels": datasets.Sequence(datasets.Value("int32"))})
    return datasets.Dataset.from_dict(columns, features=features)


# -- fingerprints and cache ----------------------------------------------------------------------

def _file_digest(path: str | None) -> str:
    if not path or not os.path.isfile(path):
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


def _dataset_identity(spec: str) -> list:
    ident = []
    for part in spec.split(","):
        p = Path(part.strip())
        if p.is_file():
            st = p.stat()
            ident.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        elif p.is_dir():
            ident.append([str(p.resolve())] + sorted([str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns]
                                                     for f in p.rglob("*") if f.is_file()))
        else:
            ident.append(part.strip())
    return ident


def fingerprint(config: TrainConfig, plan: Plan, tokenizer) -> str:
    from .. import __version__

    d = config.data
    template = plan.template.template
    # Everything whose change changes the examples: the code of the pipeline and of the two
    # plugins (their modules and the template's class), and the template object's own values.
    code_files = sorted({*(str(p) for p in Path(__file__).parent.glob("*.py")),
                         str(Path(__file__).parent.parent / "types.py"),
                         *(f for f in (_module_file(plan.fmt.converter), _module_file(type(template)),
                                       _module_file(template)) if f)})
    code = [[Path(f).name, _file_digest(f)] for f in code_files]
    code.append([repr(template), getattr(template, "chat_template", "")])
    key = {
        "v": CACHE_VERSION, "airo": __version__, "data": _dataset_identity(d.dataset or ""),
        "format": plan.fmt.name, "template": plan.template.name, "train_on": plan.trained,
        "tokenization": plan.tokenization, "code": code, "tokenizer": tokenizer_fingerprint(tokenizer),
        "options": [d.model_max_len, d.eval_dataset_size, d.train_on_source, d.expand_conversations,
                    d.include_sources, d.skip_excess_length, d.on_bad_record, d.max_train_samples,
                    d.max_eval_samples, config.seed],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_root(config: TrainConfig) -> Path | None:
    root = config.data.dataset_cache_dir or os.environ.get("AIRO_CACHE")
    if root and root.lower() in ("off", "none", "0"):
        return None
    return Path(root or Path.home() / ".cache" / "airo") / "datasets"


def _save_folder(datasets_dict, directory: Path, extra: dict[str, Any], report: DataReport) -> None:
    """The tokenized splits, report, rejects and marker, written all at once (see airo.core.atomic)."""
    from ..atomic import atomic_directory

    with atomic_directory(directory, markers=(PREPROCESSED_MARKER,)) as tmp:
        datasets_dict.save_to_disk(str(tmp))
        if report.write_rejects(tmp):
            report.rejects_file = REJECTS_FILE  # relative: the folder may move
        (tmp / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2, default=str))
        (tmp / PREPROCESSED_MARKER).write_text(json.dumps(extra, indent=2))


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
    if rejects.exists():
        report.rejects = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines() if line]
    from ..plugins import get_registry

    templates = get_registry().templates
    template = templates[meta["template"]].template if meta.get("template") in templates else None
    return PreparedData(loaded["train"], loaded["eval"] if "eval" in loaded else None, report,
                        meta.get("format", ""), meta.get("template", ""), template, meta.get("train_on", ""),
                        from_cache=True)


def is_preprocessed(path: str | None) -> bool:
    return bool(path) and (Path(path) / PREPROCESSED_MARKER).is_file()


# -- the whole pipeline ------------------------------------------------------------------------------

def build_examples(config: TrainConfig, tokenizer, plan: Plan) -> tuple[dict[str, dict[str, list]], DataReport]:
    d = config.data
    if not d.dataset:
        raise ConfigError("--dataset is required")
    report = DataReport(dataset=d.dataset, format=plan.fmt.name, template=plan.template.name,
                        train_on=plan.trained,
                        tokenization=plan.tokenization)
    splits = open_dataset(d.dataset)
    train_items = read_conversations(splits["train"], config, plan.fmt, report)
    own_eval = splits.get("eval") or splits.get("validation") or splits.get("test")
    if own_eval is not None:
        eval_items = read_conversations(own_eval, config, plan.fmt, report)
    else:
        metas = [conv.metadata for conv, _ in train_items]
        train_idx, eval_idx, report.stratified_by = split_indices(metas, d.eval_dataset_size, config.seed)
        eval_items = [train_items[i] for i in eval_idx]
        train_items = [train_items[i] for i in train_idx]
    report.conversations = len(train_items) + len(eval_items)
    if report.records_read == 0:
        raise DataError("the dataset has no records", path=d.dataset, reason="empty_dataset")
    columns = {"train": _tokenize_split(tokenizer, plan, train_items, config, report, "train", d.max_train_samples)}
    if eval_items:
        columns["eval"] = _tokenize_split(tokenizer, plan, eval_items, config, report, "eval", d.max_eval_samples)
    if not columns["train"]["input_ids"]:
        first = "; ".join(f"{r['location']}: {r['problem']}" for r in report.rejects[:3])
        error = DataError(f"no training examples left: {report.records_read} records read, dropped "
                          f"{dict(report.dropped) or 'none'}, excluded by --include_sources "
                          f"{report.excluded_by_source}" + (f". First drops: {first}" if first else ""),
                          path=d.dataset, reason="empty_dataset")
        error.report = report  # so the caller can still write rejects.jsonl
        raise error
    return columns, report


# Data options recorded with a preprocessed folder: a run that reuses the folder with other
# values would silently train on examples made differently.
RECORDED_OPTIONS = ("dataset_format", "prompt_template", "train_on", "train_on_source", "model_max_len",
                    "expand_conversations", "include_sources", "skip_excess_length", "eval_dataset_size",
                    "max_train_samples", "max_eval_samples")


def _meta(config: TrainConfig, plan: Plan, tokenizer, **extra) -> dict[str, Any]:
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


def _build_or_report(config: TrainConfig, tokenizer, plan: Plan, rejects_dir: str | Path | None):
    try:
        return build_examples(config, tokenizer, plan)
    except DataError as exc:
        report = getattr(exc, "report", None)
        if report is not None and rejects_dir:
            report.write_rejects(rejects_dir)
        raise


def prepare_datasets(config: TrainConfig, tokenizer, *, rejects_dir: str | None = None,
                     use_cache: bool = True) -> PreparedData:
    """Tokenized train (and eval) datasets for ``config``, from the cache when nothing changed."""
    import warnings

    import datasets

    if is_preprocessed(config.data.dataset):
        check_preprocessed_options(config.data.dataset, config)
        prepared = load_preprocessed(config.data.dataset, tokenizer)
        if rejects_dir:
            prepared.report.write_rejects(rejects_dir)
        return prepared
    plan = resolve_plan(config)
    root = cache_root(config) if use_cache else None
    key = fingerprint(config, plan, tokenizer) if root else None
    if root is not None and (root / key / PREPROCESSED_MARKER).is_file():
        prepared = load_preprocessed(root / key, tokenizer)
        prepared.template = plan.template.template
        if rejects_dir:
            prepared.report.write_rejects(rejects_dir)
        return prepared
    columns, report = _build_or_report(config, tokenizer, plan, rejects_dir)
    splits = {name: _to_dataset(cols) for name, cols in columns.items()}
    if root is not None:
        try:
            if not (root / key / PREPROCESSED_MARKER).is_file():  # another rank may have written it meanwhile
                _save_folder(datasets.DatasetDict(splits), root / key, _meta(config, plan, tokenizer, fingerprint=key),
                             report)
        except OSError as exc:  # a read-only or full cache costs the next run a re-tokenization, not this run
            warnings.warn(f"could not cache the tokenized dataset in {root}: {exc}")
        report.rejects_file = None
    if rejects_dir:
        report.write_rejects(rejects_dir)
    return PreparedData(splits["train"], splits.get("eval"), report, plan.fmt.name, plan.template.name,
                        plan.template.template, plan.trained)


@dataclass
class PreprocessResult:
    output_dir: str
    report: DataReport

    def summary(self) -> str:
        return "\n".join(self.report.summary_lines() + [f"saved to {self.output_dir}"])


def preprocess_to_disk(config: TrainConfig, output_dir: str) -> PreprocessResult:
    import datasets

    from ..tokenizer import load_tokenizer

    from ..atomic import check_replaceable

    out = Path(output_dir).resolve()
    check_replaceable(out, markers=(PREPROCESSED_MARKER,), what="--output folder")
    tokenizer = load_tokenizer(config)
    plan = resolve_plan(config)
    # If nothing is left to save, the rejects still land in a new (or empty) output folder;
    # an earlier output is left as it was (the error message names the first drops).
    fresh = not out.exists() or not any(out.iterdir())
    columns, report = _build_or_report(config, tokenizer, plan, out if fresh else None)
    splits = datasets.DatasetDict({name: _to_dataset(cols) for name, cols in columns.items()})
    _save_folder(splits, out, _meta(config, plan, tokenizer, model_name_or_path=config.model.model_name_or_path),
                 report)
    if report.rejects:
        report.rejects_file = str(out / REJECTS_FILE)
    return PreprocessResult(str(out), report)


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds to the decoded string, spaces included.

    Decoding one token alone loses its leading space (SentencePiece strips it) and shows a
    byte-fallback piece as a replacement character; decoding growing prefixes does not.
    """
    texts, previous = [], ""
    for k in range(1, len(ids) + 1):
        current = tokenizer.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if current.startswith(previous) and not current.endswith("\ufffd"):
            texts.append(current[len(previous):])
            previous = current
        else:  # an incomplete UTF-8 sequence: its bytes show up with the token that completes it
            texts.append("")
    return texts


def preview_examples(config: TrainConfig, n: int = 3) -> list[dict[str, Any]]:
    from ..tokenizer import load_tokenizer

    tokenizer = load_tokenizer(config)
    prepared = prepare_datasets(config, tokenizer, use_cache=False) if not is_preprocessed(config.data.dataset) \
        else load_preprocessed(config.data.dataset, tokenizer)
    out = []
    for i in range(min(n, len(prepared.train))):
        row = prepared.train[i]
        tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
        texts = token_texts(tokenizer, row["input_ids"])
        pieces = [{"id": int(t), "token": tok, "text": text, "trained": lab != -100}
                  for t, tok, text, lab in zip(row["input_ids"], tokens, texts, row["labels"])]
        out.append({"index": i, "num_tokens": len(pieces), "num_trained": sum(p["trained"] for p in pieces),
                    "text": tokenizer.decode(row["input_ids"]), "tokens": pieces})
    return out


__all__ = ["Message", "Plan", "PreparedData", "PreprocessResult", "build_examples", "expand_conversation",
           "load_preprocessed", "prepare_datasets", "preprocess_to_disk", "preview_examples", "read_conversations",
           "resolve_plan", "tokenize_conversation"]
