"""The bottom of the data layer: where airo keeps its files, and the names of the files in a
tokenized-data folder. Imports nothing of airo's, so any module may import it (the config
included: the cache home is an option's default)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PREPROCESSED_MARKER = "airo_preprocessed.json"
REPORT_FILE = "report.json"
REJECTS_FILE = "rejects.jsonl"
BUILD_DIR = ".build"  # inside a folder being written: the Arrow files examples are appended to
SHARD = "data-00000-of-00001.arrow"  # a saved split's one Arrow file, named as save_to_disk names it
KEYS_SUFFIX = ".keys"  # beside a split's Arrow file: each example's record ordinal and content keys


def cache_home(environ=None) -> Path | None:
    """airo's cache folder: ``$AIRO_CACHE``, else ``~/.cache/airo``; None when it is turned off
    (``AIRO_CACHE=off``)."""
    value = (os.environ if environ is None else environ).get("AIRO_CACHE")
    if value and value.lower() in ("off", "none", "0"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "airo"


_SCRATCH: Path | None = None


def scratch_dir() -> Path:
    """A new folder for examples that have no other home (cache off or unwritable), under one
    temporary folder removed when the process exits (training memory-maps the files)."""
    global _SCRATCH
    import atexit
    import tempfile

    if _SCRATCH is None or not _SCRATCH.is_dir():
        _SCRATCH = Path(tempfile.mkdtemp(prefix="airo-data-"))
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return Path(tempfile.mkdtemp(dir=_SCRATCH))
