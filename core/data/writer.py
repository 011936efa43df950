"""Examples to Arrow files: one split's examples appended as they are made (with each
example's record ordinal and content keys beside them, for dedup across sources), and the
JSON files ``datasets.save_to_disk`` writes, so ``load_from_disk`` reads a folder built here."""

from __future__ import annotations

import json
import shutil
from array import array
from pathlib import Path

from .paths import KEYS_SUFFIX, SHARD
from .tokenize import Tokenized


def _features():
    import datasets

    return datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                              "labels": datasets.Sequence(datasets.Value("int32"))})


class _SplitWriter:
    """One split's examples, appended to an Arrow file as they are made, in record batches of
    about ``BATCH_BYTES`` (a reader that memory-maps the file then touches little more than
    the batches it reads: with small batches, the pages faulted in around each batch header
    cover most of the file)."""

    BATCH_BYTES = 4 << 20

    def __init__(self, path: Path, limit: int | None):
        from datasets.arrow_writer import ArrowWriter

        self.path, self.limit = path, limit
        self.examples = self.tokens = self.trained = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = ArrowWriter(features=_features(), path=str(path))
        self._pending: list = []  # Arrow tables of examples not written yet (int32, compact)
        self._pending_bytes = 0
        self.keys = array("q")  # (record, prompt key, conversation key) per example not written yet, flat
        keys_path(path).unlink(missing_ok=True)

    @property
    def full(self) -> bool:
        return self.limit is not None and self.examples >= self.limit

    def add(self, examples: list[Tokenized], keys: list[tuple[int, int, int]] | None = None) -> None:
        if not examples:
            return
        for triple in keys or ():
            self.keys.extend(triple)
        import pyarrow as pa

        ints = pa.list_(pa.int32())
        table = pa.table({"input_ids": pa.array([e.input_ids for e in examples], type=ints),
                          "labels": pa.array([e.labels for e in examples], type=ints)})
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        if self._pending_bytes >= self.BATCH_BYTES:
            self._write_pending()
        self.examples += len(examples)
        self.tokens += sum(len(e.input_ids) for e in examples)
        self.trained += sum(e.trained for e in examples)

    def _write_pending(self) -> None:
        import pyarrow as pa

        if self._pending:
            table = pa.concat_tables(self._pending)
            self._writer.write_table(table, writer_batch_size=max(1, table.num_rows))  # one record batch
        if self.keys:  # appended with their examples: memory holds a batch's keys, never the split's
            with open(keys_path(self.path), "ab") as fh:
                fh.write(self.keys.tobytes())
            self.keys = array("q")
        self._pending, self._pending_bytes = [], 0

    def finalize(self) -> None:
        """Write what is left and close the file (its examples can be read from ``path``)."""
        self._write_pending()
        self._writer.finalize()

    def close(self) -> None:
        self._pending = []
        self._writer.close()



def save_layout(folder: Path, files: dict[str, Path]) -> None:
    """The JSON files ``save_to_disk`` writes beside the Arrow files of ``files`` (each
    ``folder/SPLIT/SHARD``): dataset_dict.json, and each split's state.json (the dataset's
    state: no format, no split name, a fresh fingerprint) and dataset_info.json (its
    features). A split folder without a file (an eval split left empty) is removed."""
    import datasets
    from datasets.fingerprint import generate_random_fingerprint
    from datasets.utils.py_utils import asdict  # save_to_disk's (it leaves out unset fields)

    for split in ("train", "eval"):
        if split not in files and (folder / split).is_dir():
            shutil.rmtree(folder / split)
    (folder / datasets.config.DATASETDICT_JSON_FILENAME).write_text(json.dumps({"splits": list(files)}),
                                                                    encoding="utf-8")
    for split, path in files.items():
        assert path == folder / split / SHARD, path
        state = {"_data_files": [{"filename": SHARD}], "_fingerprint": generate_random_fingerprint(),
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                 "_output_all_columns": False, "_split": None}
        (path.parent / datasets.config.DATASET_STATE_JSON_FILENAME).write_text(
            json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        info = asdict(datasets.DatasetInfo(features=_features()))
        (path.parent / datasets.config.DATASET_INFO_FILENAME).write_text(
            json.dumps({key: info[key] for key in sorted(info)}, indent=2), encoding="utf-8")



def keys_path(arrow: Path) -> Path:
    return Path(str(arrow) + KEYS_SUFFIX)


def read_keys(arrow: Path) -> array:
    """The (record, prompt key, conversation key) triples ``_SplitWriter`` wrote beside ``arrow``,
    flat; empty when the file has none (a folder from before keys were written)."""
    keys = array("q")
    path = keys_path(arrow)
    if path.is_file():
        keys.frombytes(path.read_bytes())
    return keys
