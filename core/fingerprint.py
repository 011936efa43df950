"""Content fingerprints of a run's inputs: what "the same data" means for resume and the cache.

A file is identified by the SHA-256 of its bytes, never by its path, size or mtime: a
record edited in place at the same size is a different dataset. Hashing streams the
file (1 MiB at a time), so memory stays flat whatever its size. No heavy imports here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

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


def dataset_files(spec: str | None) -> list[tuple[str, str, list[tuple[str, Path]]]]:
    """The parts of ``--dataset`` as its content hash sees them, in order: ("file", part,
    [("", path)]), ("dir", part, [(relative path, path), ...] sorted by relative path: every
    file below the folder, following symlinked folders once each) or ("name", part, [])."""
    parts = []
    for part in (p.strip() for p in (spec or "").split(",") if p.strip()):
        path = Path(part)
        if path.is_file():
            parts.append(("file", part, [("", path)]))
        elif path.is_dir():
            parts.append(("dir", part, _files_below(path)))
        else:
            parts.append(("name", part, []))
    return parts


def _files_below(folder: Path) -> list[tuple[str, Path]]:
    """Every file below ``folder`` (symlinked files and folders followed, a folder reached twice
    or a symlink loop walked once), as (relative path, path), sorted by relative path."""
    seen: set[tuple[int, int]] = set()
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        try:
            st = os.stat(top)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        for name in files:
            path = Path(top) / name
            if path.is_file():
                found.append((str(path.relative_to(folder)), path))
    return sorted(found, key=lambda item: item[0])


def dataset_content_hash(spec: str | None, digest: Callable[[Path], str] = file_sha256) -> str | None:
    """One SHA-256 over the content of every local file named by ``--dataset`` (a file, a
    comma list of files, or a folder: every file below it, by relative path). ``None``
    when nothing local is named (a Hub dataset: its name and revision are its identity).

    ``digest`` gives a file's SHA-256: by default read here, in a pass of its own; the data
    readers pass the digest of the bytes they read (``airo.core.data.io.ReadLedger``), so
    the same data gives the same value whichever computed it."""
    h = hashlib.sha256()
    local = False
    for kind, part, files in dataset_files(spec):
        if kind == "file":
            local = True
            h.update(b"file\0" + digest(files[0][1]).encode() + b"\0")
        elif kind == "dir":
            local = True
            h.update(b"dir\0")
            for rel, f in files:
                h.update(rel.encode() + b"\0" + digest(f).encode() + b"\0")
        else:
            h.update(b"name\0" + part.encode() + b"\0")
    return h.hexdigest() if local else None
