"""One airo run per folder: exclusive locks on the working, output and merged folders.

Two runs writing the same working dir would interleave their checkpoints; two merges
into one folder would swap it under each other. A lock is an ``flock`` on a file beside
the folder (``.NAME.airo-lock``), so it never writes into the folder itself and the
kernel releases it when its process dies: a stale lock from a killed run is taken over
without any guessing about pids. The file records the holder (pid, host, start time,
command) so the second run can say who holds it.

A lock covers the folder's whole tree: a run on ``A/sub`` while another run holds ``A``
is refused, and so is one on ``A`` while ``A/sub`` is held (each takes its own lock
first, then looks for a held lock above and below, so two racing runs cannot both miss
the other). The lock file is keyed by the resolved path (``..``, relative spellings and
links all lead to one lock), created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``; an
existing one is opened only when it is a regular file, never through a link), and lives
beside the folder, so no cleanup inside the folder removes it while the run is alive.

Locks are re-entrant within a process (the run holds the output dir; the save action's
atomic write locks it again). In a distributed run only the main process takes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from .durable import SymlinkRefused
from .errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

_held: dict[str, list] = {}  # lock path -> [fd, depth]
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_SUFFIX = ".airo-lock"
_held_lock = threading.Lock()


class FolderLocked(ConfigError):
    """Another process holds the folder."""


def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(folder).resolve()  # one lock per folder, however it is spelt (.., symlinks)
    return folder.parent / f".{folder.name}{_SUFFIX}"


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


def _open_lock_file(path: Path) -> int:
    """The lock file, created exclusively; an existing one opened only when it is a regular
    file and not a link (a link there would have airo write wherever it points)."""
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        except FileExistsError:
            pass
        try:
            fd = os.open(path, os.O_RDWR | _NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            continue  # its holder removed it as it released it: create it
        except OSError as exc:
            if path.is_symlink():
                raise SymlinkRefused(f"the lock file {path} is a symbolic link (to {os.path.realpath(path)}); airo "
                                     "creates its lock files itself and does not write through links. Remove "
                                     "the link.") from None
            raise exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"the lock file {path} is not a regular file; airo will not use it. Remove it.")
        return fd


def _acquire(path: Path, what: str, folder: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = _open_lock_file(path)
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
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
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


def _held_elsewhere(path: Path) -> dict | None:
    """The holder of the lock file ``path`` when another process (or another lock of this
    one, not through :func:`folder_lock`) holds it; None when it is free or ours."""
    if str(path) in _held:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _check_tree(folder: Path, what: str) -> None:
    """FolderLocked when another run holds a folder above ``folder`` or inside it."""
    for parent in folder.parents:
        if not parent.name:
            continue
        holder = _held_elsewhere(lock_path(parent))
        if holder is not None:
            raise FolderLocked(f"the {what} {folder} is inside {parent}, which another airo run is using "
                               f"({_holder_text(holder)}). Wait for it to finish, or use a folder outside it.")
    if not folder.is_dir() or folder.is_symlink():
        return
    for root, dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and name.endswith(_SUFFIX):
                holder = _held_elsewhere(Path(root) / name)
                if holder is not None:
                    inner = Path(root) / name[1:-len(_SUFFIX)]
                    raise FolderLocked(f"the {what} {folder} holds {inner}, which another airo run is using "
                                       f"({_holder_text(holder)}). Wait for it to finish, or use another folder.")


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
                _check_tree(folder, what)  # after taking ours: of two racing runs, one sees the other
            except BaseException:
                del _held[key]
                with contextlib.suppress(OSError):
                    os.unlink(path)
                os.close(entry[0])
                raise
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
