"""JSON Lines and JSON readers: streamed, every error located (file, line, column)."""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Iterator

from ..errors import DataError
from .ledger import CHUNK as _CHUNK, ReadLedger, _ledger
from .raw import RawRecord

WRAPPER_KEYS = ("data", "train", "records", "examples", "rows", "items")

# Readers yield a DataError in place of a record they cannot read, so that with
# --on_bad_record skip the rest of the file is still read; the caller raises or counts it.


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


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # json.loads would keep the last value without a word
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _duplicate_key(key: str, path: str, *, line: int | None = None, index: int | None = None) -> DataError:
    return DataError(f"key {key!r} appears twice in one JSON object (which value is meant?)", path=path, line=line,
                     index=index, reason="duplicate_key")


def read_jsonl(path: str, ledger: ReadLedger | None = None) -> Iterator[RawRecord | DataError]:
    with _ledger(ledger).open(path) as fh:
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
                obj = _DECODER.decode(text.rstrip("\r\n"))  # an error at the line's end is on this line
            except _DuplicateKey as exc:
                yield _duplicate_key(exc.key, path, line=lineno)
                continue
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
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


class _JsonText:
    """A JSON file decoded as it is read: ``buf`` holds the value being parsed and what
    follows it, never the whole file (a large array is read one element at a time)."""

    def __init__(self, path: str, ledger: ReadLedger):
        self.path = path
        self._fh = ledger.open(path)
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
        """Parse the JSON value at the cursor; _TooDeep if it nests past the recursion limit,
        _DuplicateKey if one of its objects has a key twice (the cursor stays at its start)."""
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
            except _DuplicateKey as exc:
                line = self.where(self.pos)[0]
                self.skip_value()
                yield index, _duplicate_key(exc.key, self.path, line=line)
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


def read_json(path: str, ledger: ReadLedger | None = None) -> Iterator[RawRecord | DataError]:
    """A JSON array of records, ``{"data": [...]}`` (or another WRAPPER_KEYS name), a lone
    record, or JSON Lines saved as ``.json``; arrays are read one record at a time."""
    ledger = _ledger(ledger)
    text = _JsonText(path, ledger)
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
            shape = _wrapper_shape(path, ledger)
            if shape == "wrapper":
                text.pos = wrapper.end()
                yield from _records(text.items(), path)
                return
            if shape == "lines":
                yield from read_jsonl(path, ledger)
                return
            # An object with more keys than the list: one record, read whole as before.
        try:
            obj = text.value()
        except _TooDeep:
            text.skip_value()
            obj = _too_deep(path, index=0)
        except _DuplicateKey as exc:
            line = text.where(text.pos)[0]
            text.skip_value()
            obj = _duplicate_key(exc.key, path, line=line)
        if text.peek():  # more after the first value: many ".json" files are JSON Lines
            yield from read_jsonl(path, ledger)
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


def _wrapper_shape(path: str, ledger: ReadLedger) -> str:
    """For a file starting ``{"data": [``: "wrapper" when that is the object's only key and
    nothing follows, "lines" when more values follow it (JSON Lines), "record" when the
    object has more keys. A first pass that keeps nothing, so records can then stream."""
    text = _JsonText(path, ledger)
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
