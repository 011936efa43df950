"""Content fingerprints of a run's inputs: what "the same data" means for resume and the cache.

A file is identified by the SHA-256 of its bytes, never by its path, size or mtime: a
record edited in place at the same size is a different dataset. Hashing streams the
file (1 MiB at a time), so memory stays flat whatever its size. No heavy imports here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


_memo: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes. Remembered per process for an unchanged file (same inode,
    size, mtime and ctime: ctime changes on every write and cannot be set back), so the
    resume check and the cache key do not read a large file twice."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _memo:
        return _memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    _memo[key] = h.hexdigest()
    return _memo[key]


def dataset_content_hash(spec: str | None) -> str | None:
    """One SHA-256 over the content of every local file named by ``--dataset`` (a file, a
    comma list of files, or a folder: every file below it, by relative path). ``None``
    when nothing local is named (a Hub dataset: its name and revision are its identity)."""
    if not spec:
        return None
    h = hashlib.sha256()
    local = False
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        path = Path(part)
        if path.is_file():
            local = True
            h.update(b"file\0" + file_sha256(path).encode() + b"\0")
        elif path.is_dir():
            local = True
            h.update(b"dir\0")
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(str(f.relative_to(path)).encode() + b"\0" + file_sha256(f).encode() + b"\0")
        else:
            h.update(b"name\0" + part.encode() + b"\0")
    return h.hexdigest() if local else None
