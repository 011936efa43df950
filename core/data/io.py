"""Reading dataset files into records that remember where they came from."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

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

def _not_object(obj: Any, path: str, *, line: int | None = None, index: int | None = None) -> DataError:
    return DataError(f"expected a JSON object (a record), got {type(obj).__name__}", path=path, line=line,
                     index=index, reason="not_an_object")


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
            yield RawRecord(obj, path, line=lineno) if isinstance(obj, dict) else _not_object(obj, path, line=lineno)


def read_json(path: str) -> Iterator[RawRecord | DataError]:
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"invalid UTF-8: {exc.reason}", path=path, line=line, reason="invalid_utf8") from None
    if not text.strip():
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # Many ".json" files are JSON Lines; read them as such.
            yield from read_jsonl(path)
            return
        raise DataError(f"malformed JSON at column {exc.colno}: {exc.msg}", path=path, line=exc.lineno,
                        reason="malformed_json") from None
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in WRAPPER_KEYS \
            and isinstance(next(iter(obj.values())), list):
        obj = next(iter(obj.values()))  # {"data": [...]}; a lone {"conversations": [...]} is one record
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        raise DataError(f"expected a JSON array of records, got {type(obj).__name__}", path=path,
                        reason="not_an_object")
    for i, item in enumerate(obj):
        yield RawRecord(item, path, index=i) if isinstance(item, dict) else _not_object(item, path, index=i)


def read_delimited(path: str, delimiter: str) -> Iterator[RawRecord | DataError]:
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"invalid UTF-8: {exc.reason}", path=path, line=line, reason="invalid_utf8") from None
    # newline="": only \r and \n end rows, as the csv module expects (str.splitlines would
    # also split on \x0c, \x85 or \u2028 inside a field).
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    for row in reader:
        if None in row:
            yield DataError("more fields than the header names", path=path, line=reader.line_num,
                            reason="invalid_record")
            continue
        yield RawRecord(dict(row), path, line=reader.line_num)


def read_parquet(path: str) -> Iterator[RawRecord | DataError]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types; keep the cause
        raise DataError(f"cannot read parquet: {exc}", path=path, reason="unreadable_file") from None
    for i, row in enumerate(table.to_pylist()):
        yield RawRecord(row, path, index=i)


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


def load_saved_splits(path: str) -> dict[str, Iterator[RawRecord | DataError]]:
    """A folder written by ``datasets.save_to_disk``: its own splits, records indexed."""
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot load the saved dataset: {exc}", path=path, reason="unreadable_file") from None
    return _splits_from(loaded, path)


def _splits_from(loaded, label: str) -> dict[str, Iterator[RawRecord | DataError]]:
    import datasets

    if isinstance(loaded, datasets.Dataset):
        loaded = {"train": loaded}
    if "train" not in loaded:
        raise DataError(f"the dataset has no 'train' split (it has: {', '.join(loaded) or 'none'})", path=label,
                        reason="unreadable_file")

    def rows(ds, split):
        for i, row in enumerate(ds):
            yield RawRecord(dict(row), f"{label}[{split}]", index=i)

    return {split: rows(ds, split) for split, ds in loaded.items()}


def load_hub_splits(name: str) -> dict[str, Iterator[RawRecord | DataError]]:
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as exc:  # noqa: BLE001 - never hide why: offline, missing, private...
        raise DataError(f"cannot load dataset {name!r} from the Hub (not a local file or folder either): "
                        f"{type(exc).__name__}: {exc}", path=name, reason="unreadable_file") from None
    return _splits_from(loaded, name)


def open_dataset(spec: str) -> dict[str, Iterator[RawRecord | DataError]]:
    """Records by split. Files give one ``train`` split; saved or Hub datasets keep theirs.

    Several files can be given separated by commas.
    """
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    if len(paths) > 1:
        def chained():
            for p in paths:
                yield from open_dataset(p)["train"]
        return {"train": chained()}
    path = paths[0]
    if os.path.isdir(path):
        if is_saved_dataset(path):
            return load_saved_splits(path)
        raise DataError("folder is neither a saved `datasets` folder nor an `airo preprocess` output",
                        path=path, reason="unsupported_file")
    if os.path.isfile(path):
        return {"train": read_file(path)}
    if Path(path).suffix.lower() in SUFFIXES or os.sep in path and not _looks_like_hub_name(path):
        raise DataError("file not found", path=path, reason="file_not_found")
    return load_hub_splits(path)


def _looks_like_hub_name(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))
