"""One airo run per folder: exclusive locks on the working, output and merged folders.

Two runs writing the same working dir would interleave their checkpoints; two merges
into one folder would swap it under each other. A lock is an ``flock`` on a file beside
the folder (``.NAME.airo-lock``), so it never writes into the folder itself and the
kernel releases it when its process dies: a stale lock from a killed run is taken over
without any guessing about pids. The file records the holder (pid, host, start time,
command) so the second run can say who holds it.

Locks are re-entrant within a process (the run holds the output dir; the save action's
atomic write locks it again). In a distributed run only the main process takes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from .errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

_held: dict[str, list] = {}  # lock path -> [fd, depth]
_held_lock = threading.Lock()


class FolderLocked(ConfigError):
    """Another process holds the folder."""


def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(folder).resolve()  # one lock per folder, however it is spelt (.., symlinks)
    return folder.parent / f".{folder.name}.airo-lock"


def _holder_text(data: dict) -> str:
    parts = [f"pid {data.get('pid', '?')}"]
    if data.get("host"):
        parts.append(f"on {data['host']}")
    if data.get("started"):
        parts.append(f"started {data['started']}")
    text = ", ".join(parts)
    if data.get("command"):
        text += f": {data['command']}"
    return text


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _acquire(path: Path, what: str, folder: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderLocked(f"the {what} {folder} is in use by another airo run ({_holder_text(holder)}). "
                               "Wait for it to finish, or use another folder.") from None
        except BaseException:
            os.close(fd)
            raise
        # The holder we waited behind may have removed the file as it released it: then we
        # locked a file nobody else will see. Lock the one at the path instead.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        previous = _read_holder(fd)
        if previous.get("pid") and previous.get("host") == socket.gethostname() \
                and previous.get("pid") != os.getpid():
            print(f"[airo] note: the lock on {folder} was left by pid {previous['pid']}, which is no longer "
                  "running; taking it over", file=sys.stderr, flush=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)[:500], "folder": str(folder)}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode("utf-8"))
    except BaseException:  # e.g. a full disk: the lock must not stay held by a forgotten descriptor
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, what: str = "folder") -> Iterator[None]:
    """Hold the exclusive lock on ``folder`` for the block; FolderLocked if another process has it."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    folder = Path(folder).resolve()
    path = lock_path(folder)
    key = str(path)
    with _held_lock:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            _held[key] = entry = [_acquire(path, what, folder), 1]
    try:
        yield
    finally:
        with _held_lock:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                # unlink while still holding it, so the next holder re-checks the inode
                with contextlib.suppress(OSError):
                    os.unlink(path)
                os.close(entry[0])


@contextlib.contextmanager
def folder_locks(named: list[tuple[str, str | os.PathLike]]) -> Iterator[None]:
    """Lock several folders (``(what, path)``), each once, in a stable order."""
    seen: dict[str, str] = {}
    for what, path in named:
        seen.setdefault(str(Path(path).resolve()), what)
    with contextlib.ExitStack() as stack:
        for path in sorted(seen):
            stack.enter_context(folder_lock(path, what=seen[path]))
        yield
