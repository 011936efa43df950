"""Preference data: records -> preference pairs (or labelled replies) -> tokenized examples.

A preference format (``record_kind="preference"`` or ``"unpaired"``) turns each record into an
:class:`~airo.core.PreferencePair` (a conversation prefix, a chosen and a rejected reply) or
an :class:`~airo.core.UnpairedExample` (a prefix, a reply and whether it is desirable).
Each reply is rendered with its prefix by the run's prompt template and tokenized exactly as
SFT tokenizes that conversation with ``--train_on last_reply`` (the reference tokenization
for templates that have one: the airoboros legacy and llama-2 chat templates), so the
scored tokens are the ones an SFT run on the same conversation trains on. The tokens the
two replies of a pair share before the first scored one are stored once
(``prompt_input_ids``); ``chosen_*``/``rejected_*`` (or ``completion_*``) hold the rest,
with their labels: prompt + continuation is the SFT example, token for token.

Bad records fail with their file and line (or, under ``--on_bad_record skip``, are
counted and written to the rejects); pairs whose replies are identical or empty, and
examples the length rules drop, are counted by reason in the report.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, DataError, PluginError
from .types import PreferencePair, UnpairedExample

PAIR_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
UNPAIRED_COLUMNS = ("prompt_input_ids", "completion_input_ids", "completion_labels", "desirable")
_TYPES = {"preference": PreferencePair, "unpaired": UnpairedExample}
BATCH = 512  # records rendered and tokenized per tokenizer call


def preference_plan(config):
    """The format and template of ``config`` with the training signal a preference objective
    needs: the last reply only (the one the pair's replies differ in)."""
    from .data.plan import Plan, resolve_plan

    d = config.data
    if d.train_on == "all_replies" or d.train_on_source:
        raise ConfigError(f"--objective {config.run.objective} scores the final reply of each conversation: "
                          "--train_on all_replies and --train_on_source do not apply; leave them out")
    if d.expand_conversations:
        raise ConfigError(f"--expand_conversations does not apply to preference data (--objective "
                          f"{config.run.objective}): each record is one prefix and its final replies")
    plan = resolve_plan(config)
    has_reference = callable(getattr(plan.template.template, "source_target", None))
    return Plan(plan.fmt, plan.template, "last_reply", "reference" if has_reference else "whole", False)


def _render(plan, conversation, bos: str, eos: str):
    """What SFT's tokenizer gets for ``conversation`` (``source_target`` for the reference
    tokenization, else the segments); a template refusing it is a ValueError (a bad record)."""
    method = "source_target" if plan.tokenization == "reference" else "render"
    entry = plan.template
    try:
        return getattr(entry.template, method)(conversation, bos_token=bos, eos_token=eos)
    except (ConfigError, PluginError):
        raise
    except Exception as exc:  # noqa: BLE001 - a template tripping over one record is a bad record
        raise ValueError(f"template {entry.name!r} (plugin {entry.plugin}): {type(exc).__name__}: {exc}") from None


def split_at_prompt(ids: list[int], labels: list[int], other_ids: list[int], other_labels: list[int]) -> int:
    """How many leading tokens two examples of one prefix share before either scores one."""
    from .data.tokenize import IGNORE_INDEX

    first = min(next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(labels)),
                next((i for i, x in enumerate(other_labels) if x != IGNORE_INDEX), len(other_labels)))
    k = 0
    while k < first and k < len(ids) and k < len(other_ids) and ids[k] == other_ids[k]:
        k += 1
    return k


class _Records:
    """Reads the records of ``config.data.dataset`` into preference records, with the report."""

    def __init__(self, config, plan, record_kind: str, report):
        self.config, self.plan, self.kind, self.report = config, plan, record_kind, report
        self.skip_bad = config.data.on_bad_record == "skip"
        spec = config.data.include_sources
        self.sources = None if spec.strip().upper() == "ALL" else {s.strip() for s in spec.split(",") if s.strip()}

    def _convert(self, raw) -> list:
        fmt = self.plan.fmt
        try:
            result = fmt.converter(raw.record)
        except ValueError as exc:
            raise raw.error(str(exc)) from None
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise raw.error(f"format {fmt.name!r} failed on this record: {type(exc).__name__}: {exc}") from None
        items = [] if result is None else result if isinstance(result, list) else [result]
        for item in items:
            if not isinstance(item, _TYPES[self.kind]):
                raise PluginError(f"dataset format {fmt.name!r} (plugin {fmt.plugin}) returned {type(item).__name__} "
                                  f"for {raw.location}; a {self.kind} format returns {_TYPES[self.kind].__name__}, "
                                  "a list of them, or None")
            try:
                item.validate()
            except ValueError as exc:
                raise raw.error(str(exc)) from None
        return items

    def _skip_reason(self, item) -> str | None:
        replies = (item.chosen, item.rejected) if self.kind == "preference" else (item.reply,)
        if any(not r.strip() for r in replies):
            return "empty_reply"
        if self.kind == "preference" and item.chosen == item.rejected:
            return "identical_replies"
        return None

    def read(self) -> list[tuple[Any, Any]]:
        """(record, raw) for every kept record, in order."""
        from .data.io import dataset_sources
        from .records import record_metadata

        report, kept = self.report, []
        sources = dataset_sources(self.config.data.dataset, self.ledger)
        for split in sources:
            for raw in sources[split]():
                report.records_read += 1
                if isinstance(raw, DataError):
                    if not self.skip_bad:
                        raise raw
                    report.drop(raw.reason, raw.location, raw.problem)
                    continue
                if self.sources is not None and raw.record.get("source") not in self.sources:
                    report.excluded_by_source += 1
                    continue
                try:
                    items = self._convert(raw)
                except DataError as exc:
                    if not self.skip_bad:
                        raise
                    report.drop(exc.reason, exc.location, exc.problem, raw.record)
                    continue
                if not items:
                    report.drop("skipped_by_format", raw.location, f"format {self.plan.fmt.name!r} skipped the record",
                                raw.record)
                for item in items:
                    record_metadata(raw.record, item.metadata)
                    reason = self._skip_reason(item)
                    if reason is not None:
                        what = "a reply is empty" if reason == "empty_reply" else "chosen and rejected are the same"
                        report.drop(reason, raw.location, what, raw.record)
                    else:
                        kept.append((item, raw))
        return kept


def _tokenize(config, tokenizer, plan, items: list, kind: str, report, split: str) -> dict[str, list]:
    """The columns of ``items``' tokenized examples; the ones the length rules drop are counted."""
    from .data.pipeline import tokenize_rendered
    from .data.tokenize import IGNORE_INDEX, Dropped, max_chars_per_token

    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    chars = max_chars_per_token(tokenizer)
    columns: dict[str, list] = {c: [] for c in (PAIR_COLUMNS if kind == "preference" else UNPAIRED_COLUMNS)}
    sides = ("chosen", "rejected") if kind == "preference" else ("completion",)
    for start in range(0, len(items), BATCH):
        chunk, rendered, kept = items[start:start + BATCH], [], []
        for item, raw in chunk:
            convs = [item.conversation(s) for s in sides] if kind == "preference" else [item.conversation()]
            try:
                rendered.extend(_render(plan, c, bos, eos) for c in convs)
            except ValueError as exc:
                if config.data.on_bad_record != "skip":
                    raise raw.error(str(exc)) from None
                report.drop("invalid_record", raw.location, str(exc), raw.record)
                continue
            kept.append((item, raw))
        results = tokenize_rendered(tokenizer, plan, rendered, config, chars_per_token=chars)
        for j, (item, raw) in enumerate(kept):
            examples = results[j * len(sides):(j + 1) * len(sides)]
            dropped = next((e for e in examples if isinstance(e, Dropped)), None)
            if dropped is not None:
                report.drop(dropped.reason, raw.location, dropped.detail, raw.record)
                continue
            ids, labels = examples[0].input_ids, examples[0].labels
            k = split_at_prompt(ids, labels, examples[-1].input_ids, examples[-1].labels)
            columns["prompt_input_ids"].append(ids[:k])
            for side, ex in zip(sides, examples):
                columns[f"{side}_input_ids"].append(ex.input_ids[k:])
                columns[f"{side}_labels"].append(ex.labels[k:])
                report.tokens[split] = report.tokens.get(split, 0) + len(ex.input_ids)
                trained = len(ex.labels) - ex.labels.count(IGNORE_INDEX)
                report.trained_tokens[split] = report.trained_tokens.get(split, 0) + trained
            if kind == "unpaired":
                columns["desirable"].append(bool(item.desirable))
    report.examples[split] = len(columns["prompt_input_ids"])
    return columns


def _dataset(columns: dict[str, list]):
    import datasets

    ids = datasets.Sequence(datasets.Value("int32"))
    features = datasets.Features({name: (datasets.Value("bool") if name == "desirable" else ids) for name in columns})
    return datasets.Dataset.from_dict(columns, features=features)


def prepare_preferences(config, tokenizer, *, record_kind: str = "preference", rejects_dir: str | None = None):
    """Tokenized train (and eval) preference examples for ``config`` (a ``PreparedData``).

    The eval split is drawn from the records as SFT draws it (``--eval_dataset_size``,
    stratified by category or source, seeded by ``--seed``). The records are held in memory
    while they are split (preference sets are pairs of replies, not pretraining corpora);
    the examples are built in memory too and not cached."""
    from .data.io import ReadLedger
    from .data.plan import PreparedData
    from .data.report import DataReport
    from .data.split import split_indices

    if record_kind not in _TYPES:
        raise ConfigError(f"record kind {record_kind!r} is not preference data")
    plan = preference_plan(config)
    if plan.fmt.record_kind != record_kind:
        raise ConfigError(f"--dataset_format {plan.fmt.name} gives {plan.fmt.record_kind} records; "
                          f"--objective {config.run.objective} reads {record_kind} records")
    report = DataReport(dataset=config.data.dataset or "", format=plan.fmt.name, template=plan.template.name,
                        train_on="last_reply", tokenization=plan.tokenization)
    reader = _Records(config, plan, record_kind, report)
    reader.ledger = ReadLedger()
    try:
        items = reader.read()
        report.conversations = len(items)
        train_idx, eval_idx, report.stratified_by = split_indices([item.metadata for item, _ in items],
                                                                  config.data.eval_dataset_size, config.seed)
        splits = {"train": [items[i] for i in train_idx], "eval": [items[i] for i in eval_idx]}
        if config.data.max_train_samples:
            splits["train"] = splits["train"][:config.data.max_train_samples]
        if config.data.max_eval_samples:
            splits["eval"] = splits["eval"][:config.data.max_eval_samples]
        built = {name: _dataset(_tokenize(config, tokenizer, plan, part, record_kind, report, name))
                 for name, part in splits.items() if part or name == "train"}
    finally:
        if rejects_dir:
            report.write_rejects(rejects_dir)
    report.content_hash = reader.ledger.content_hash(config.data.dataset)
    eval_set = built.get("eval")
    return PreparedData(built["train"], eval_set if eval_set is not None and len(eval_set) else None, report,
                        plan.fmt.name, plan.template.name, plan.template.template, "last_reply",
                        data_fingerprint=report.content_hash)


def preview_pairs(config, n: int = 3) -> list[dict[str, Any]]:
    """``airo preview`` for preference data: the first ``n`` records, each reply as one
    example (prompt + reply, the scored tokens marked), in ``airo.core.data.preview``'s shape."""
    import copy

    from .data.preview import PreviewExamples, token_texts
    from .objectives import select_objective
    from .tokenizer import load_tokenizer

    kind = select_objective(config).record_kind
    config = copy.deepcopy(config)
    config.data.eval_dataset_size, config.data.max_train_samples = 0, n  # the first records, in order
    tokenizer = load_tokenizer(config)
    prepared = prepare_preferences(config, tokenizer, record_kind=kind)
    out = PreviewExamples()
    out.report_lines = prepared.report.summary_lines()
    for i, row in enumerate(prepared.train):
        sides = ("chosen", "rejected") if kind == "preference" else ("completion",)
        for side in sides:
            ids = list(row["prompt_input_ids"]) + list(row[f"{side}_input_ids"])
            labels = [-100] * len(row["prompt_input_ids"]) + list(row[f"{side}_labels"])
            name = side if kind == "preference" else ("desirable" if row["desirable"] else "undesirable")
            pieces = [{"id": int(t), "token": tok, "text": text, "trained": lab != -100}
                      for t, tok, text, lab in zip(ids, tokenizer.convert_ids_to_tokens(ids),
                                                   token_texts(tokenizer, ids), labels)]
            out.append({"index": f"{i} {name}", "num_tokens": len(pieces),
                        "num_trained": sum(p["trained"] for p in pieces), "text": tokenizer.decode(ids),
                        "tokens": pieces})
    return out


def record_conversations(records, fmt) -> list:
    """(conversation, location) of each readable record of a preference format: a pair's
    prefix with its chosen reply, or an unpaired example's; bad records are left out (the
    chat-template check reads the data as training does, without stopping at them)."""
    out = []
    for raw in records:
        if isinstance(raw, DataError):
            continue
        try:
            result = fmt.converter(raw.record)
            items = [] if result is None else result if isinstance(result, list) else [result]
            for item in items:
                item.validate()
                out.append((item.conversation("chosen") if isinstance(item, PreferencePair) else item.conversation(),
                            raw.location))
        except Exception:  # noqa: BLE001 - a bad record is left out here; training reports it
            continue
    return out
