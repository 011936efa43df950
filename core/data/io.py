"""Reading dataset files into records that remember where they came from: the reader of
each input kind (``read_json``, ``read_table``, ``read_saved``) by suffix or folder, all
through one ``ReadLedger`` (``ledger``). The names below are re-exported for callers."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Iterator

from ..errors import DataError
from . import ledger as _ledger_module, read_json as _json_module, read_table as _table_module
from .ledger import ReadLedger, _FileRecord, _HashedRaw, _ledger  # noqa: F401 - re-exported
from .raw import RawRecord, Source, one_line as _one_line  # noqa: F401 - re-exported
from .read_json import (WRAPPER_KEYS, _JsonText, _duplicate_key, _not_object, _too_deep,  # noqa: F401
                        _utf8_error, read_json, read_jsonl)
from .read_saved import (_read_json_file, _saved_split_source, _splits_from, is_saved_dataset,  # noqa: F401
                         load_hub_splits, load_saved_splits)
from .read_table import _arrow_rows, _duplicate_field, read_csv, read_delimited, read_parquet, read_tsv  # noqa: F401

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")

READERS = {".jsonl": read_jsonl, ".json": read_json, ".parquet": read_parquet, ".csv": read_csv, ".tsv": read_tsv}


def read_file(path: str, ledger: ReadLedger | None = None) -> Iterator[RawRecord | DataError]:
    reader = READERS.get(Path(path).suffix.lower())
    if reader is None:
        suffix = Path(path).suffix.lower()
        raise DataError(f"unsupported file type {suffix or '(none)'!r}; use one of {', '.join(SUFFIXES)}",
                        path=path, reason="unsupported_file")
    return reader(path, ledger)


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


# The readers' tunables live in the modules that use them; setting one here (a test making
# the chunks small) sets it there too.
_TUNABLES = {"_CHUNK": (_ledger_module, _json_module), "_CSV_FIELD_LIMIT": (_table_module,)}
_CHUNK = _ledger_module._CHUNK
_CSV_FIELD_LIMIT = _table_module._CSV_FIELD_LIMIT


class _Module(types.ModuleType):
    def __setattr__(self, name, value):
        for module in _TUNABLES.get(name, ()):
            setattr(module, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Module
