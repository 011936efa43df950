"""Reading dataset files into records that remember where they came from."""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import DataError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")
WRAPPER_KEYS = ("data", "train", "records", "examples", "rows", "items")


@dataclass
class RawRecord:
    record: dict[str, Any]
    path: str
    line: int | None = None   # 1-based line, for line-oriented files
    index: int | None = None  # 0-based record index, for the rest

    def error(self, problem: str, reason: str = "invalid_record") -> DataError:
        return DataError(problem, path=self.path, line=self.line, index=self.index, reason=reason)

    @property
    def location(self) -> str:
        return self.error("").location


# Readers yield a DataError in place of a record they cannot read, so that with
# --on_bad_record skip the rest of the file is still read; the caller raises or counts it.
# Every reader streams: memory holds one record (and a chunk of the file), never the file.

_CHUNK = 1 << 20
# Fields of any size are a record's business (a long document); the limit is the C long's.
_CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


def _not_object(obj: Any, path: str, *, line: int | None = None, index: int | None = None) -> DataError:
    return DataError(f"expected a JSON object (a record), got {type(obj).__name__}", path=path, line=line,
                     index=index, reason="not_an_object")


def _too_deep(path: str, *, line: int | None = None, index: int | None = None) -> DataError:
    return DataError("JSON nested too deeply to read (more levels than Python's recursion limit)", path=path,
                     line=line, index=index, reason="too_deeply_nested")


def _utf8_error(path: str) -> DataError:
    """The located error for a file found not to be UTF-8 (the error path only: it reads the file again)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                return DataError(f"invalid UTF-8: {exc.reason}", path=path, line=lineno, reason="invalid_utf8")
    return DataError("invalid UTF-8", path=path, reason="invalid_utf8")


def read_jsonl(path: str) -> Iterator[RawRecord | DataError]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield DataError(f"invalid UTF-8 (byte {exc.start} of the line): {exc.reason}", path=path,
                                line=lineno, reason="invalid_utf8")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield DataError(f"malformed JSON at column {exc.colno}: {exc.msg}", path=path, line=lineno,
                                reason="malformed_json")
                continue
            except RecursionError:
                yield _too_deep(path, line=lineno)
                continue
            yield RawRecord(obj, path, line=lineno) if isinstance(obj, dict) else _not_object(obj, path, line=lineno)


class _TooDeep(Exception):
    pass


_WS = re.compile(r"[ \t\n\r]*")
_OPEN_OR_CLOSE = re.compile(r'["\[\]{}]')
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_WRAPPER = re.compile(r'\{[ \t\n\r]*"(?:%s)"[ \t\n\r]*:[ \t\n\r]*\[' % "|".join(WRAPPER_KEYS))
_DECODER = json.JSONDecoder()


class _JsonText:
    """A JSON file decoded as it is read: ``buf`` holds the value being parsed and what
    follows it, never the whole file (a large array is read one element at a time)."""

    def __init__(self, path: str):
        self.path = path
        self._fh = open(path, "rb")
        self._utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf = ""
        self.pos = 0
        self.eof = False
        self._lines_before = 0  # newlines in the text already dropped from buf
        self._column_before = 0  # characters between the last dropped newline and buf[0]

    def close(self) -> None:
        self._fh.close()

    def _more(self, at_least: int = 0) -> None:
        """Drop what was parsed and read at least a chunk more (or ``at_least`` bytes: an
        element that does not fit is re-parsed with twice the text, not once per chunk)."""
        done = self.buf[: self.pos]
        newline = done.rfind("\n")
        if newline >= 0:
            self._lines_before += done.count("\n")
            self._column_before = len(done) - newline - 1
        else:
            self._column_before += len(done)
        data = self._fh.read(max(_CHUNK, at_least))
        try:
            text = self._utf8.decode(data, final=not data)
        except UnicodeDecodeError:
            raise _utf8_error(self.path) from None
        self.buf = self.buf[self.pos:] + text
        self.pos = 0
        self.eof = not data

    def where(self, pos: int) -> tuple[int, int]:
        """(line, column), 1-based, of ``buf[pos]`` in the file."""
        line = self._lines_before + self.buf.count("\n", 0, pos) + 1
        newline = self.buf.rfind("\n", 0, pos)
        return line, (pos - newline if newline >= 0 else self._column_before + pos + 1)

    def malformed(self, msg: str, pos: int) -> DataError:
        line, column = self.where(pos)
        return DataError(f"malformed JSON at column {column}: {msg}", path=self.path, line=line,
                         reason="malformed_json")

    def peek(self) -> str:
        """The next character after whitespace ("" at the end of the file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self._more()

    def need(self, pattern: re.Pattern, size: int = 64):
        """Match ``pattern`` at the cursor, reading on while fewer than ``size`` characters remain."""
        while len(self.buf) - self.pos < size and not self.eof:
            self._more()
        return pattern.match(self.buf, self.pos)

    def value(self) -> Any:
        """Parse the JSON value at the cursor; _TooDeep if it nests past the recursion limit."""
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # A value cut by the end of the buffer fails at that end (or as an unterminated
                # string); read on before calling it malformed.
                if not self.eof and (exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - 8):
                    self._more(len(self.buf) - self.pos)
                    continue
                raise self.malformed(exc.msg, exc.pos) from None
            except RecursionError:
                raise _TooDeep from None
            if end >= len(self.buf) and not self.eof:  # a number may go on in the next chunk
                self._more(len(self.buf) - self.pos)
                continue
            self.pos = end
            return obj

    def skip_value(self) -> None:
        """Move past the array or object at the cursor without building it (for values too
        deep to parse), counting brackets outside strings."""
        depth, rel = 0, 0  # offsets from self.pos survive _more()
        while True:
            m = _OPEN_OR_CLOSE.search(self.buf, self.pos + rel)
            if m is None:
                if self.eof:
                    raise self.malformed("unexpected end of the file", len(self.buf))
                rel = len(self.buf) - self.pos
                self._more(rel)
                continue
            if m.group() == '"':
                s = _STRING.match(self.buf, m.start())
                if s is None:
                    if self.eof:
                        raise self.malformed("unterminated string", m.start())
                    rel = m.start() - self.pos
                    self._more(len(self.buf) - self.pos)
                    continue
                rel = s.end() - self.pos
                continue
            depth += 1 if m.group() in "[{" else -1
            rel = m.end() - self.pos
            if depth <= 0:
                self.pos += rel
                return

    def items(self) -> Iterator[tuple[int, Any]]:
        """The elements of the array whose ``[`` was just consumed: (index, value or a
        DataError for one too deep); ends after the closing ``]``."""
        index = 0
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            self.peek()
            try:
                yield index, self.value()
            except _TooDeep:
                self.skip_value()
                yield index, _too_deep(self.path, index=index)
            index += 1
            c = self.peek()
            if c == "]":
                self.pos += 1
                return
            if c != ",":
                raise self.malformed("Expecting ',' delimiter" if c else "unexpected end of the file", self.pos)
            self.pos += 1


def _records(items: Iterator[tuple[int, Any]], path: str) -> Iterator[RawRecord | DataError]:
    for i, item in items:
        if isinstance(item, DataError):
            yield item
        else:
            yield RawRecord(item, path, index=i) if isinstance(item, dict) else _not_object(item, path, index=i)


def read_json(path: str) -> Iterator[RawRecord | DataError]:
    """A JSON array of records, ``{"data": [...]}`` (or another WRAPPER_KEYS name), a lone
    record, or JSON Lines saved as ``.json``; arrays are read one record at a time."""
    text = _JsonText(path)
    try:
        first = text.peek()
        if not first:
            return
        if first == "[":
            text.pos += 1
            yield from _records(text.items(), path)
            if text.peek():
                raise text.malformed("Extra data after the array of records", text.pos)
            return
        wrapper = text.need(_WRAPPER) if first == "{" else None
        if wrapper is not None:
            shape = _wrapper_shape(path)
            if shape == "wrapper":
                text.pos = wrapper.end()
                yield from _records(text.items(), path)
                return
            if shape == "lines":
                yield from read_jsonl(path)
                return
            # An object with more keys than the list: one record, read whole as before.
        try:
            obj = text.value()
        except _TooDeep:
            text.skip_value()
            obj = _too_deep(path, index=0)
        if text.peek():  # more after the first value: many ".json" files are JSON Lines
            yield from read_jsonl(path)
            return
    finally:
        text.close()
    if isinstance(obj, DataError):
        yield obj
    elif isinstance(obj, dict):
        yield RawRecord(obj, path, index=0)
    else:
        raise DataError(f"expected a JSON array of records, got {type(obj).__name__}", path=path,
                        reason="not_an_object")


def _wrapper_shape(path: str) -> str:
    """For a file starting ``{"data": [``: "wrapper" when that is the object's only key and
    nothing follows, "lines" when more values follow it (JSON Lines), "record" when the
    object has more keys. A first pass that keeps nothing, so records can then stream."""
    text = _JsonText(path)
    try:
        text.peek()
        text.pos = text.need(_WRAPPER).end()
        for _ in text.items():
            pass
        c = text.peek()
        if c != "}":
            return "record"
        text.pos += 1
        return "lines" if text.peek() else "wrapper"
    finally:
        text.close()


def read_delimited(path: str, delimiter: str) -> Iterator[RawRecord | DataError]:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    kind = "CSV" if delimiter == "," else "TSV"
    with open(path, "rb") as raw:
        # newline="": only \r and \n end rows, as the csv module expects (str.splitlines would
        # also split on \x0c, \x85 or \u2028 inside a field).
        fh = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        fetched = 0  # lines handed to the reader: the last one is where a csv.Error happened

        def lines():
            nonlocal fetched
            for line in fh:
                fetched += 1
                yield line

        reader = csv.DictReader(lines(), delimiter=delimiter)
        try:
            reader.fieldnames
        except UnicodeDecodeError:
            raise _utf8_error(path) from None
        except csv.Error as exc:
            raise DataError(f"malformed {kind} header: {exc}", path=path, line=fetched, reason="malformed_csv") \
                from None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise _utf8_error(path) from None
            except csv.Error as exc:  # the reader goes on at the next line
                yield DataError(f"malformed {kind}: {exc}", path=path, line=fetched, reason="malformed_csv")
                continue
            if None in row:
                yield DataError("more fields than the header names", path=path, line=reader.line_num,
                                reason="invalid_record")
                continue
            yield RawRecord(dict(row), path, line=reader.line_num)


def read_parquet(path: str) -> Iterator[RawRecord | DataError]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield RawRecord(row, path, index=index)
                index += 1
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types; keep the cause
        raise DataError(f"cannot read parquet: {exc}", path=path, reason="unreadable_file") from None


def read_file(path: str) -> Iterator[RawRecord | DataError]:
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        return read_json(path)
    if suffix == ".parquet":
        return read_parquet(path)
    if suffix == ".csv":
        return read_delimited(path, ",")
    if suffix == ".tsv":
        return read_delimited(path, "\t")
    raise DataError(f"unsupported file type {suffix or '(none)'!r}; use one of {', '.join(SUFFIXES)}",
                    path=path, reason="unsupported_file")


def is_saved_dataset(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists())


# A source opens a fresh iterator over one split's records each time it is called: the
# pipeline reads the data twice (once to count and split, once to tokenize) rather than
# keeping every record in memory.
Source = Callable[[], Iterator["RawRecord | DataError"]]


def load_saved_splits(path: str) -> dict[str, Source]:
    """A folder written by ``datasets.save_to_disk``: its own splits, records indexed."""
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot load the saved dataset: {exc}", path=path, reason="unreadable_file") from None
    return _splits_from(loaded, path)


def _splits_from(loaded, label: str) -> dict[str, Source]:
    import datasets

    if isinstance(loaded, datasets.Dataset):
        loaded = {"train": loaded}
    if "train" not in loaded:
        raise DataError(f"the dataset has no 'train' split (it has: {', '.join(loaded) or 'none'})", path=label,
                        reason="unreadable_file")

    def source(ds, split) -> Source:
        def rows():
            for i, row in enumerate(ds):
                yield RawRecord(dict(row), f"{label}[{split}]", index=i)
        return rows

    return {split: source(ds, split) for split, ds in loaded.items()}


def load_hub_splits(name: str) -> dict[str, Source]:
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as exc:  # noqa: BLE001 - never hide why: offline, missing, private...
        raise DataError(f"cannot load dataset {name!r} from the Hub (not a local file or folder either): "
                        f"{type(exc).__name__}: {exc}", path=name, reason="unreadable_file") from None
    return _splits_from(loaded, name)


def dataset_sources(spec: str) -> dict[str, Source]:
    """Record sources by split. Files give one ``train`` split; saved or Hub datasets keep
    theirs. Several files can be given separated by commas."""
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    if len(paths) > 1:
        parts = [dataset_sources(p)["train"] for p in paths]

        def chained():
            for part in parts:
                yield from part()
        return {"train": chained}
    path = paths[0]
    if os.path.isdir(path):
        if is_saved_dataset(path):
            return load_saved_splits(path)
        raise DataError("folder is neither a saved `datasets` folder nor an `airo preprocess` output",
                        path=path, reason="unsupported_file")
    if os.path.isfile(path):
        return {"train": lambda: read_file(path)}
    if Path(path).suffix.lower() in SUFFIXES or os.sep in path and not _looks_like_hub_name(path):
        raise DataError("file not found", path=path, reason="file_not_found")
    return load_hub_splits(path)


def open_dataset(spec: str) -> dict[str, Iterator[RawRecord | DataError]]:
    """Records by split, each split read once (see ``dataset_sources`` to read again)."""
    return {split: source() for split, source in dataset_sources(spec).items()}


def _looks_like_hub_name(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def dataset_paths(spec: str | None) -> list[str]:
    return [p.strip() for p in (spec or "").split(",") if p.strip() and Path(p.strip()).exists()]
