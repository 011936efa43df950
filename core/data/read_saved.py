"""Saved ``datasets`` folders (streamed through the ledger) and Hub datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError
from .ledger import ReadLedger, _ledger
from .raw import RawRecord, Source, one_line as _one_line
from .read_table import _arrow_rows


def is_saved_dataset(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists())



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

