"""Reading benchmark question files for decontamination (``decontaminate.load_benchmark_questions``).

By suffix: ``.jsonl``/``.ndjson``, ``.json`` (an array, a ``{"data": [...]}``-style wrapper,
one record, or JSON Lines under a ``.json`` name), ``.csv``/``.tsv`` and ``.parquet``; a
folder means its files with these suffixes, sorted. A record's question is its first field
among ``QUESTION_FIELDS``, which must hold a string (a record that is a bare string is the
question). From the evaluation plugin's MMLU files
(``{"input", "output": A-D}``, prompts ending in ``Answer:``) the question asked last in the
prompt, without its choices. A CSV/TSV file has a header naming a question field, or MMLU's
own layout: no header; question, choices..., answer letter (MMLU's ``data/*/*.csv``). Every
problem is a ``DataError`` naming the file and the line (the record for Parquet).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import DataError

QUESTION_FIELDS = ("question", "prompt", "instruction", "input", "text")
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
WRAPPER_KEYS = ("data", "train", "test", "validation", "records", "examples", "rows", "items")
_CHOICE = re.compile(r"^[A-J][.)] ")


def question_files(path: Path) -> list[str]:
    """The question files at ``path``: the file, or a folder's files with known suffixes, sorted."""
    if path.is_dir():
        found = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        if not found:
            raise DataError(f"a folder with no question files ({', '.join(SUFFIXES)})", path=str(path),
                            reason="no_questions")
        return found
    if not path.is_file():
        raise DataError("no such file or folder", path=str(path), reason="unreadable_file")
    return [str(path)]


class _Bad(Exception):
    """A record's problem, before the reader adds where it is."""

    def __init__(self, problem: str, reason: str = "invalid_record"):
        super().__init__(problem)
        self.problem, self.reason = problem, reason


def _located(items: Iterable[tuple[object, int | None, int | None]], path: str,
             line_of=None) -> Iterator[tuple[str, str]]:
    """(question, origin) of each (record, line, index); a bad one is a DataError located there."""
    for record, line, index in items:
        try:
            question = _question_of(record)
        except _Bad as bad:
            line = line if line is not None or line_of is None else line_of(index)
            raise DataError(bad.problem, path=path, line=line, index=index, reason=bad.reason) from None
        yield question, f"{path}, line {line}" if line is not None else f"{path}, record {index}"


def read_questions(path: str) -> Iterator[tuple[str, str]]:
    """(question text, where it is: ``"FILE, line N"`` or ``"FILE, record N"``) for each record of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"unsupported file type {suffix or '(none)'!r} for benchmark questions; use one of "
                        f"{', '.join(SUFFIXES)}", path=path, reason="unsupported_file")
    if suffix == ".parquet":
        yield from _located(_read_parquet(path), path)
        return
    try:
        data = Path(path).read_bytes()
        text = data.decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", path=path, reason="unreadable_file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"invalid UTF-8: {exc.reason}", path=path, line=data.count(b"\n", 0, exc.start) + 1,
                        reason="invalid_utf8") from None
    if suffix in (".csv", ".tsv"):
        yield from _located(_read_table(text, path, "\t" if suffix == ".tsv" else ","), path)
        return
    obj = None
    if suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            if text.lstrip().startswith("["):
                raise DataError(f"malformed JSON at column {exc.colno}: {exc.msg}", path=path, line=exc.lineno,
                                reason="malformed_json") from None
            # not one JSON value: JSON Lines under a .json name (as the evaluation plugin reads them)
    if isinstance(obj, list):
        yield from _located(((r, None, i) for i, r in enumerate(obj)), path, lambda i: _array_line(text, i))
        return
    if isinstance(obj, dict):
        wrapped = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), list)]
        if wrapped and not any(f in obj for f in QUESTION_FIELDS):
            yield from _located(((r, None, i) for i, r in enumerate(obj[wrapped[0]])), path)
        else:
            yield from _located([(obj, 1, None)], path)
        return
    yield from _located(_read_lines(text, path), path)


def _read_lines(text: str, path: str) -> Iterator[tuple[object, int, None]]:
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield json.loads(line), lineno, None
            except json.JSONDecodeError as exc:
                raise DataError(f"malformed JSON at column {exc.colno}: {exc.msg}", path=path, line=lineno,
                                reason="malformed_json") from None


def _array_line(text: str, index: int) -> int:
    """The line where element ``index`` of the (valid) JSON array ``text`` starts."""
    decoder, gap = json.JSONDecoder(), re.compile(r"[ \t\n\r,]*")
    pos = gap.match(text, text.index("[") + 1).end()
    for _ in range(index):
        pos = gap.match(text, decoder.raw_decode(text, pos)[1]).end()
    return text.count("\n", 0, pos) + 1


def _question_of(record) -> str:
    if isinstance(record, str):  # from a table's question column
        return record
    if not isinstance(record, dict):
        raise _Bad(f"expected an object with a question field, got {type(record).__name__}", "not_an_object")
    name = next((f for f in QUESTION_FIELDS if f in record), None)
    if name is None:
        raise _Bad(f"no question field (one of {', '.join(QUESTION_FIELDS)}); the record has "
                   f"{', '.join(map(repr, record)) or 'no fields'}", "missing_field")
    value = record[name]
    if not isinstance(value, str):
        raise _Bad(f"field {name!r} holds {'null' if value is None else type(value).__name__}, not a string")
    if name == "input" and record.get("output") in ("A", "B", "C", "D") and value.rstrip().endswith("Answer:"):
        # the evaluation plugin's MMLU prompt: the question asked last, without choices and "Answer:"
        lines = value.rstrip()[:-len("Answer:")].split("\n\n")[-1].split("\n")
        while lines and (not lines[-1].strip() or _CHOICE.match(lines[-1])):
            lines.pop()
        return "\n".join(lines)
    return value


def _read_table(text: str, path: str, delimiter: str) -> Iterator[tuple[str, int, None]]:
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    kind, column, width = None, 0, 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"malformed {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}", path=path, line=start,
                            reason="malformed_csv") from None
        if not row:
            continue
        if kind is None:
            names = [c.strip().lower() for c in row]
            header = next((f for f in QUESTION_FIELDS if f in names), None)
            width = len(row)
            if header is not None:
                kind, column = "header", names.index(header)
                continue
            if len(row) < 3 or not _letter(row[-1], len(row) - 2):
                raise DataError(f"no header naming a question column ({', '.join(QUESTION_FIELDS)}), and not "
                                "MMLU's layout (no header; question, choices..., answer letter)", path=path,
                                line=start, reason="missing_field")
            kind = "mmlu"
        if len(row) != width:
            raise DataError(f"{len(row)} fields, the first row has {width}", path=path, line=start,
                            reason="ragged_row")
        if kind == "mmlu" and not _letter(row[-1], width - 2):
            raise DataError(f"answer {row[-1]!r} is not a letter naming one of the {width - 2} choices (MMLU layout)",
                            path=path, line=start, reason="invalid_record")
        yield row[column], start, None


def _letter(cell: str, choices: int) -> bool:
    return len(cell.strip()) == 1 and cell.strip() in "ABCDEFGHIJ"[:choices]


def _read_parquet(path: str) -> Iterator[tuple[str, None, int]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types; keep the cause
        raise DataError(f"cannot read parquet: {(str(exc) or type(exc).__name__).splitlines()[0]}", path=path,
                        reason="unreadable_file") from None
    names = parquet.schema_arrow.names
    name = next((f for f in QUESTION_FIELDS if f in names), None)
    if name is None:
        raise DataError(f"no question column (one of {', '.join(QUESTION_FIELDS)}); the columns are "
                        f"{', '.join(names) or 'none'}", path=path, reason="missing_field")
    kind = parquet.schema_arrow.field(name).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"column {name!r} holds {kind}, not strings", path=path, reason="invalid_record")
    index = 0
    for batch in parquet.iter_batches(columns=[name], batch_size=65536):
        for value in batch.column(0).to_pylist():
            yield {name: value}, None, index
            index += 1
