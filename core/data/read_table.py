"""CSV, TSV and parquet readers (and the Arrow rows the saved-dataset reader shares)."""

from __future__ import annotations

import csv
import io
import sys
from typing import Iterator

from ..errors import DataError
from .ledger import ReadLedger, _ledger
from .raw import RawRecord, one_line as _one_line
from .read_json import _utf8_error

# Fields of any size are a record's business (a long document); the limit is the C long's.
_CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


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

