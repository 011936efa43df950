"""Writing files durably and never through a link: the primitives every folder airo owns is
written with (:mod:`airo.core.atomic` writes whole folders with them, :mod:`airo.core.ownership`
stamps them).

Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (:func:`open_exclusive`), small
files are replaced in one rename after an fsync (:func:`write_text`, :func:`write_json`), and
folders are fsynced after their entries change (:func:`fsync_dir`, :func:`fsync_tree`), so a
power loss cannot leave an empty file that is marked complete. A link where airo is about
to write is refused (:class:`SymlinkRefused`), never written through.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import ConfigError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class SymlinkRefused(ConfigError):
    """airo was about to write (or replace, or lock) through a symbolic link."""


def _link_text(path: Path) -> str:
    return f"{path} is a symbolic link (to {os.path.realpath(path)})"


def _refuse_link(path: Path, what: str = "file") -> None:
    if path.is_symlink():
        raise SymlinkRefused(f"the {what} {_link_text(path)}; airo does not write through links. Remove the link, "
                             "or give the real path.")


def _real_dir(folder: Path, what: str = "folder") -> None:
    """SymlinkRefused unless ``folder`` is a folder itself, not a link to one."""
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        raise ConfigError(f"the {what} {folder} does not exist") from None
    if stat.S_ISLNK(mode):
        _refuse_link(folder, what)
    if not stat.S_ISDIR(mode):
        raise ConfigError(f"the {what} {folder} is a file, not a folder")


def open_exclusive(path: str | os.PathLike, mode: int = 0o644) -> int:
    """A new file at ``path``, opened for writing with ``O_CREAT | O_EXCL | O_NOFOLLOW``: never
    an existing file, never through a link. A regular file already there (a temp file
    left by a crash) is removed and the creation tried once more; a link is refused."""
    path = Path(path)
    for attempt in (0, 1):
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode)
        except FileExistsError:
            _refuse_link(path)
            if attempt or not path.is_file():
                raise
            path.unlink()
    raise AssertionError("unreachable")  # pragma: no cover


# -- durability ------------------------------------------------------------------------------

def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (renames, new files) durable. A no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file below ``root``, then every folder (children before parents)."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                fsync_file(path)
        fsync_dir(folder)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small file so that it is either the old or the whole new content, and durable.
    The temp file is created exclusively and never through a link; a link at ``path`` (or
    one swapped in while writing) is refused, not replaced."""
    path = Path(path)
    _refuse_link(path)
    tmp = path.with_name(f".{path.name}.airo-tmp-{os.getpid()}")
    fd = open_exclusive(tmp)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        _refuse_link(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def read_json_dict(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
