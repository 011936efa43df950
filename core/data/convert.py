"""Records -> conversations: the format plugin's converter run on each record, checked; bad
records raised or (``--on_bad_record skip``) counted and written to the rejects."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol

from ..errors import DataError, PluginError
from ..records import record_metadata
from ..types import Conversation, DatasetFormat
from .raw import RawRecord

if TYPE_CHECKING:
    from ..config import TrainConfig
    from .report import DataReport

class Screen(Protocol):
    """Decontamination (``decontaminate.QuestionIndex``): for each text of a stream, why it
    must not be trained on ("exact", "ngram": it contains a benchmark question) or None, in
    order, reading the stream a batch ahead."""

    def iter_match(self, texts: Iterable[str]) -> Iterator[str | None]: ...


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
                       report: DataReport | None, *, screen: Screen | None = None
                       ) -> Iterator[tuple[Conversation, RawRecord]]:
    """The conversations of ``records`` in order, each with its record. A bad record raises,
    or under --on_bad_record skip is counted in ``report`` and written to its rejects.
    ``report=None`` reads again records that were counted once: nothing is counted.
    ``screen`` (decontamination): a record whose text (every message of its conversations)
    it names is left out, counted as ``decontaminated`` and written to the rejects with the
    reason; records are screened in batches, a batch ahead of the conversations yielded."""

    def drop(reason: str, location: str, problem: str, record: Any = None) -> None:
        if report is not None:
            report.drop(reason, location, problem, record)

    converted = _converted(records, config, fmt, report, drop)
    if screen is None:
        for items, raw in converted:
            for item in items:
                yield item, raw
        return
    ahead: deque = deque()

    def texts() -> Iterator[str]:
        for items, raw in converted:
            ahead.append((items, raw))
            yield "\n".join(m.content for item in items for m in item.messages)

    for hit in screen.iter_match(texts()):
        items, raw = ahead.popleft()
        if hit:
            drop("decontaminated", raw.location, f"contains a benchmark question ({hit} match)", raw.record)
            continue
        for item in items:
            yield item, raw


def _converted(records: Iterable[RawRecord | DataError], config: TrainConfig, fmt: DatasetFormat,
               report: DataReport | None, drop) -> Iterator[tuple[list[Conversation], RawRecord]]:
    """Each good record's conversations (checked, expanded), with the record."""
    skip_bad = config.data.on_bad_record == "skip"
    sources = None
    if config.data.include_sources.strip().upper() != "ALL":
        sources = {s.strip() for s in config.data.include_sources.split(",") if s.strip()}
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
        yield items, raw


def read_conversations(records: Iterable[RawRecord | DataError], config: TrainConfig, fmt: DatasetFormat,
                       report: DataReport) -> list[tuple[Conversation, RawRecord]]:
    """``iter_conversations`` as a list (for a few records: the pipeline streams them)."""
    return list(iter_conversations(records, config, fmt, report))

