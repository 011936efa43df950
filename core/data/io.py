"""Reading dataset files into records that remember where they came from."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
import stat
import sys
from collections import OrderedDict
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


# -- the data as read ------------------------------------------------------------------------------
#
# Every byte a reader parses comes through a ReadLedger, which hashes it in the same pass: the
# content hash of what was read is the content hash of what was trained on, with no window
# between a hash and a read. The first read of a file records its SHA-256 (the same value
# ``fingerprint.file_sha256`` gives for the same bytes) and one SHA-256 per 1 MiB chunk; every
# later read of the file through the same ledger (a second pass, a reader that looks twice, a
# random-access format reading the footer first) is checked chunk by chunk against the first,
# so a file that changes between two reads is a DataError, never two different datasets.


def _changed(path: str, offset: int) -> DataError:
    return DataError(f"the file changed while airo was reading it (from byte {offset}); run again once nothing "
                     "writes to it", path=path, reason="changed_during_read")


class _FileRecord:
    """One file as first read: its chunks' digests and, once the end was read, its SHA-256."""

    def __init__(self, path: str):
        self.path = path
        self.chunks: list[bytes] = []
        self.size: int | None = None  # known once the last (short or empty) chunk was read
        self.sha256: str | None = None
        self._whole = hashlib.sha256()

    def accept(self, i: int, data: bytes) -> None:
        """Chunk ``i`` as just read: recorded (the next one in order) or checked (read before)."""
        if i < len(self.chunks):
            if hashlib.sha256(data).digest() != self.chunks[i]:
                raise _changed(self.path, i * _CHUNK)
            return
        if self.size is not None:  # past the end: a longer file than the first read saw
            if data:
                raise _changed(self.path, self.size)
            return
        assert i == len(self.chunks), "chunks are recorded in order"
        self.chunks.append(hashlib.sha256(data).digest())
        self._whole.update(data)
        if len(data) < _CHUNK:
            self.size = i * _CHUNK + len(data)
            self.sha256 = self._whole.hexdigest()


class _HashedRaw(io.RawIOBase):
    """A file read through its ``_FileRecord``: every chunk served is recorded or checked."""

    _KEEP = 4  # chunks kept (a random-access reader goes back and forth within a few)

    def __init__(self, record: _FileRecord, path: str):
        super().__init__()
        self._record = record
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise DataError(f"cannot open: {exc.strerror}", path=path, reason="unreadable_file") from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise DataError("not a regular file", path=path, reason="unreadable_file")
        self._pos = 0
        self._kept: OrderedDict[int, bytes] = OrderedDict()

    def _read_chunk(self, i: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._fd, _CHUNK, i * _CHUNK)
        os.lseek(self._fd, i * _CHUNK, os.SEEK_SET)
        return os.read(self._fd, _CHUNK)

    def _chunk(self, i: int) -> bytes:
        data = self._kept.get(i)
        if data is not None:
            self._kept.move_to_end(i)
            return data
        record = self._record
        while record.size is None and len(record.chunks) < i:  # the chunks before, in order
            record.accept(len(record.chunks), self._read_chunk(len(record.chunks)))
        data = self._read_chunk(i)
        record.accept(i, data)
        self._kept[i] = data
        if len(self._kept) > self._KEEP:
            self._kept.popitem(last=False)
        return data

    def complete(self) -> None:
        """Read on to the end of the file, so that its record has its SHA-256 and size."""
        while self._record.size is None:
            self._chunk(len(self._record.chunks))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out):
            i, offset = divmod(self._pos, _CHUNK)
            piece = memoryview(self._chunk(i))[offset: offset + len(out) - done]
            if not piece:
                break
            out[done: done + len(piece)] = piece
            done += len(piece)
            self._pos += len(piece)
        return done

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            self.complete()
            offset += self._record.size
        elif whence == os.SEEK_CUR:
            offset += self._pos
        if offset < 0:
            raise OSError("negative seek position")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
            self._kept.clear()
        super().close()


class ReadLedger:
    """The files one preparation of the data read, each hashed as it was read (see above).

    ``content_hash(spec)`` is ``fingerprint.dataset_content_hash(spec)`` over the bytes read:
    the same value for unchanged files (same algorithm, same bytes), so it can be compared
    with a cache key or a checkpoint's record made before the read."""

    def __init__(self) -> None:
        self._files: dict[str, _FileRecord] = {}

    def _record(self, path) -> _FileRecord:
        key = os.path.abspath(os.fspath(path))
        if key not in self._files:
            self._files[key] = _FileRecord(os.fspath(path))
        return self._files[key]

    def open(self, path) -> io.BufferedReader:
        """``path`` opened for binary reading, every byte read recorded or checked."""
        return io.BufferedReader(_HashedRaw(self._record(path), os.fspath(path)), buffer_size=1 << 16)

    def digest(self, path) -> str:
        """The SHA-256 of ``path`` as read (the rest of it read now, through the ledger, if no
        reader got to its end; the whole of it for a file no reader opened)."""
        record = self._record(path)
        if record.sha256 is None:
            raw = _HashedRaw(record, os.fspath(path))
            try:
                raw.complete()
            finally:
                raw.close()
        return record.sha256

    def content_hash(self, spec: str | None) -> str | None:
        from ..fingerprint import dataset_content_hash

        return dataset_content_hash(spec, digest=self.digest)


def _ledger(ledger: "ReadLedger | None") -> "ReadLedger":
    return ledger if ledger is not None else ReadLedger()


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
                obj = _DECODER.decode(text)
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


def _header(names: list[str], path: str, line: int, kind: str) -> list[str]:
    """The column names of a CSV or TSV file; a name given twice is an error (one column would
    be lost: a record keeps one value per name)."""
    first: dict[str, int] = {}
    for column, name in enumerate(names, start=1):
        if name in first:
            raise DataError(f"the {kind} header names column {name!r} twice (columns {first[name]} and {column}); "
                            "rename one", path=path, line=line, reason="duplicate_column")
        first[name] = column
    return names


def _ragged(fields: int, header: list[str], path: str, line: int) -> DataError:
    more = "more" if fields > len(header) else "fewer"
    return DataError(f"{fields} field{'s' if fields != 1 else ''}, {more} than the {len(header)} the header names",
                     path=path, line=line,
                     reason="invalid_record")


def read_csv(path: str, ledger: ReadLedger | None = None) -> Iterator[RawRecord | DataError]:
    """CSV (RFC 4180): fields separated by commas, a field in double quotes may hold commas,
    newlines and doubled quotes. Every row has as many fields as the header names."""
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    with _ledger(ledger).open(path) as raw:
        # newline="": only \r and \n end rows, as the csv module expects (str.splitlines would
        # also split on \x0c, \x85 or \u2028 inside a field).
        fh = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        fetched = 0  # lines handed to the reader: the last one is where a csv.Error happened

        def lines():
            nonlocal fetched
            for line in fh:
                fetched += 1
                yield line

        # strict: a quote inside an unquoted field, or text after a closing quote, is an error
        # (not quietly kept), and so is a quoted field the file ends in
        reader = csv.reader(lines(), strict=True)
        header: list[str] | None = None
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                raise _utf8_error(path) from None
            except csv.Error as exc:  # the reader goes on at the next line
                problem = f"malformed CSV: {exc}"
                if "unexpected end of data" in str(exc):
                    problem = (f"malformed CSV: the quoted field that starts on line {start} is never closed "
                               "(the rest of the file is inside it)")
                if header is None:
                    raise DataError(problem.replace("CSV:", "CSV header:", 1), path=path, line=start,
                                    reason="malformed_csv") from None
                yield DataError(problem, path=path, line=start if "never closed" in problem else fetched,
                                reason="malformed_csv")
                continue
            if not row:  # a blank line
                continue
            if header is None:
                header = _header(row, path, reader.line_num, "CSV")
                continue
            if len(row) != len(header):
                yield _ragged(len(row), header, path, reader.line_num)
                continue
            yield RawRecord(dict(zip(header, row)), path, line=reader.line_num)


def read_tsv(path: str, ledger: ReadLedger | None = None) -> Iterator[RawRecord | DataError]:
    """TSV (the IANA text/tab-separated-values rules, not CSV's): one record per line, fields
    separated by tabs and taken as written: no quoting (a double quote is a character of the
    field) and no escapes, so a field holds no tab and no newline. A line ends with \n or
    \r\n; a blank line is no record. Every line has as many fields as the header names."""
    with _ledger(ledger).open(path) as fh:
        header: list[str] | None = None
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                error = DataError(f"invalid UTF-8 (byte {exc.start} of the line): {exc.reason}", path=path,
                                  line=lineno, reason="invalid_utf8")
                if header is None:
                    raise error from None
                yield error
                continue
            if text.endswith("\n"):
                text = text[:-2] if text.endswith("\r\n") else text[:-1]
            if not text:
                continue
            fields = text.split("\t")
            if header is None:
                header = _header(fields, path, lineno, "TSV")
                continue
            if len(fields) != len(header):
                yield _ragged(len(fields), header, path, lineno)
                continue
            yield RawRecord(dict(zip(header, fields)), path, line=lineno)


def read_delimited(path: str, delimiter: str, ledger: ReadLedger | None = None) -> Iterator[RawRecord | DataError]:
    """CSV (``","``) or TSV (``"\t"``), each by its own rules."""
    return read_csv(path, ledger) if delimiter == "," else read_tsv(path, ledger)


def _duplicate_field(schema, path: str) -> DataError | None:
    """A column (or a field of a struct column) named twice: a record keeps one of them."""
    import pyarrow as pa

    def walk(fields, where: str):
        seen: set[str] = set()
        for f in fields:
            if f.name in seen:
                return f"{where}{f.name!r}"
            seen.add(f.name)
            t = f.type
            while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
                t = t.value_type
            if pa.types.is_struct(t):
                found = walk([t.field(i) for i in range(t.num_fields)], f"{where}{f.name}.")
                if found:
                    return found
        return None

    found = walk(list(schema), "")
    if found is None:
        return None
    return DataError(f"column {found} appears twice in the schema; rename one", path=path, reason="duplicate_column")


def _arrow_rows(batches, path: str, schema) -> Iterator[RawRecord]:
    duplicate = _duplicate_field(schema, path)
    if duplicate is not None:
        raise duplicate
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield RawRecord(row, path, index=index)
            index += 1


def read_parquet(path: str, ledger: ReadLedger | None = None) -> Iterator[RawRecord | DataError]:
    import pyarrow.parquet as pq

    fh = _ledger(ledger).open(path)
    try:
        parquet = pq.ParquetFile(fh)
        yield from _arrow_rows(parquet.iter_batches(batch_size=1024), path, parquet.schema_arrow)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types; keep the cause
        raise DataError(f"cannot read parquet: {_one_line(exc)}", path=path, reason="unreadable_file") from None
    finally:
        fh.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


READERS = {".jsonl": read_jsonl, ".json": read_json, ".parquet": read_parquet, ".csv": read_csv, ".tsv": read_tsv}


def read_file(path: str, ledger: ReadLedger | None = None) -> Iterator[RawRecord | DataError]:
    reader = READERS.get(Path(path).suffix.lower())
    if reader is None:
        suffix = Path(path).suffix.lower()
        raise DataError(f"unsupported file type {suffix or '(none)'!r}; use one of {', '.join(SUFFIXES)}",
                        path=path, reason="unsupported_file")
    return reader(path, ledger)


def is_saved_dataset(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists())


# A source opens a fresh iterator over one split's records each time it is called: the
# pipeline reads the data twice (once to count and split, once to tokenize) rather than
# keeping every record in memory.
Source = Callable[[], Iterator["RawRecord | DataError"]]


def _read_json_file(path: str, ledger: ReadLedger) -> Any:
    with ledger.open(path) as fh:
        data = fh.read()
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read the saved dataset's metadata: {_one_line(exc)}", path=path,
                        reason="unreadable_file") from None


def _saved_split_source(folder: str, label: str, ledger: ReadLedger) -> Source:
    """The records of one saved ``datasets.Dataset`` folder, streamed from its Arrow files
    through the ledger (``datasets.load_from_disk`` would memory-map them: bytes read later
    than any hash of them)."""
    state = _read_json_file(os.path.join(folder, "state.json"), ledger)
    files = state.get("_data_files") if isinstance(state, dict) else None
    names = [f.get("filename") for f in files] if isinstance(files, list) and all(
        isinstance(f, dict) for f in files) else None
    if not names or not all(isinstance(n, str) and n and os.path.basename(n) == n for n in names):
        raise DataError("state.json does not list the dataset's Arrow files (`_data_files`)",
                        path=os.path.join(folder, "state.json"), reason="unreadable_file")
    decode = None
    info_path = os.path.join(folder, "dataset_info.json")
    if os.path.isfile(info_path):
        info = _read_json_file(info_path, ledger)
        if isinstance(info, dict) and isinstance(info.get("features"), dict):
            import datasets
            from datasets.features.features import require_decoding

            try:
                features = datasets.Features.from_dict(info["features"])
            except Exception as exc:  # noqa: BLE001 - unknown feature types
                raise DataError(f"cannot read the saved dataset's features: {_one_line(exc)}", path=info_path,
                                reason="unreadable_file") from None
            if any(require_decoding(f) for f in features.values()):
                decode = features.decode_example

    def rows() -> Iterator[RawRecord | DataError]:
        import pyarrow as pa

        index = 0
        for name in names:
            arrow = os.path.join(folder, name)
            fh = ledger.open(arrow)
            try:
                stream = pa.ipc.open_stream(fh)
                for record in _arrow_rows(stream, arrow, stream.schema):
                    row = decode(record.record) if decode is not None else record.record
                    yield RawRecord(row, label, index=index)
                    index += 1
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - pyarrow raises many types; keep the cause
                raise DataError(f"cannot read the saved dataset: {_one_line(exc)}", path=arrow,
                                reason="unreadable_file") from None
            finally:
                fh.close()
    return rows


def load_saved_splits(path: str, ledger: ReadLedger | None = None) -> dict[str, Source]:
    """A folder written by ``datasets.save_to_disk`` (a Dataset or a DatasetDict): its own
    splits, records indexed, every file read through ``ledger``."""
    ledger = _ledger(ledger)
    if os.path.isfile(os.path.join(path, "state.json")):
        return {"train": _saved_split_source(path, f"{path}[train]", ledger)}
    meta = _read_json_file(os.path.join(path, "dataset_dict.json"), ledger)
    splits = meta.get("splits") if isinstance(meta, dict) else None
    if not isinstance(splits, list) or not all(isinstance(x, str) and x and os.path.basename(x) == x
                                               for x in splits):
        raise DataError("dataset_dict.json does not list the splits", path=os.path.join(path, "dataset_dict.json"),
                        reason="unreadable_file")
    if "train" not in splits:
        raise DataError(f"the dataset has no 'train' split (it has: {', '.join(splits) or 'none'})", path=path,
                        reason="unreadable_file")
    return {split: _saved_split_source(os.path.join(path, split), f"{path}[{split}]", ledger) for split in splits}


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


def dataset_sources(spec: str, ledger: ReadLedger | None = None) -> dict[str, Source]:
    """Record sources by split. Files give one ``train`` split; saved or Hub datasets keep
    theirs. Several files can be given separated by commas. Every local byte is read
    through ``ledger`` (see ReadLedger): ``ledger.content_hash(spec)`` is the hash of what
    the sources read."""
    ledger = _ledger(ledger)
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    if len(paths) > 1:
        parts = [dataset_sources(p, ledger)["train"] for p in paths]

        def chained():
            for part in parts:
                yield from part()
        return {"train": chained}
    path = paths[0]
    if os.path.isdir(path):
        if is_saved_dataset(path):
            return load_saved_splits(path, ledger)
        raise DataError("folder is neither a saved `datasets` folder nor an `airo preprocess` output",
                        path=path, reason="unsupported_file")
    if os.path.isfile(path):
        return {"train": lambda: read_file(path, ledger)}
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
