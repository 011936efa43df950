"""Folders airo writes: owned, written all at once, durable, and never a user's.

Ownership. Every folder airo creates as a whole (an output, a merged model, a working
dir, a checkpoint, a preprocessed dataset) carries a stamp file, :data:`OWNER_STAMP`.
airo replaces or deletes a folder only when it holds that stamp (or is empty, or does
not exist). A ``config.json`` is no proof: a user's folder may hold one. A symlink is
never written through, since replacing it would replace the folder it points to.

Atomicity. :func:`atomic_directory` writes into a temp folder beside the target and
swaps it in with renames, so a crash leaves the previous output (or nothing), never a
half-written one. Durability: files are fsynced, then their folder, before a rename or a
marker makes them count (:func:`fsync_tree`, :func:`write_json`), so a power loss cannot
leave an empty file that is marked complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError

OWNER_STAMP = ".airo-owned"


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
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file below ``root``, then every folder (children before parents)."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                fsync_file(path)
        fsync_dir(folder)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small file so that it is either the old or the whole new content, and durable."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.airo-tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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


# -- ownership -------------------------------------------------------------------------------

def stamp(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` as airo's: what it is, who wrote it and when."""
    from . import __version__

    write_json(Path(folder) / OWNER_STAMP, {"kind": kind, "airo_version": __version__, "pid": os.getpid(),
                                           "host": socket.gethostname(),
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def is_owned(folder: str | os.PathLike, markers: tuple[str, ...] = ()) -> bool:
    """Whether airo wrote ``folder``: it holds the stamp (or one of ``markers``, airo-only
    file names that older versions wrote before the stamp existed)."""
    folder = Path(folder)
    return folder.is_dir() and not folder.is_symlink() and any(
        (folder / name).is_file() for name in (OWNER_STAMP, *markers))


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def check_replaceable(target: str | os.PathLike, *, what: str = "folder", markers: tuple[str, ...] = ()) -> None:
    """ConfigError unless airo may write ``target`` as a whole: it does not exist, is an
    empty folder, or is a folder airo stamped; it is not a symlink; no file stands in its path."""
    raw = Path(target).absolute()
    if raw.is_symlink():
        raise ConfigError(f"the {what} {raw} is a symbolic link (to {os.path.realpath(raw)}); airo does not write "
                          "through links, since replacing one would replace the folder it points to. Give the "
                          "real path of a new or empty folder.")
    resolved = raw.resolve()
    for parent in [resolved, *resolved.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot write the {what} {resolved}: {parent} is a file, not a folder")
            break
    if resolved.exists() and not _is_empty_dir(resolved) and not is_owned(resolved, markers):
        raise ConfigError(f"the {what} {resolved} already exists and holds files airo did not write (no "
                          f"{OWNER_STAMP} stamp); airo replaces that folder as a whole and will not touch them. "
                          "Choose a new folder, or empty this one.")


def claim_folder(target: str | os.PathLike, *, kind: str, what: str = "folder") -> Path:
    """Create (or adopt an empty) ``target`` and stamp it, or accept one airo already stamped.
    A folder holding anything else is refused (ConfigError) and left untouched."""
    check_replaceable(target, what=what)
    path = Path(target).resolve()
    path.mkdir(parents=True, exist_ok=True)
    if not (path / OWNER_STAMP).is_file():
        stamp(path, kind)
    return path


# -- folders apart from each other and from what a run reads --------------------------------

def inside(child: str | os.PathLike, parent: str | os.PathLike) -> bool:
    child, parent = Path(child).resolve(), Path(parent).resolve()
    return child == parent or parent in child.parents


def check_separate(named: list[tuple[str, str | os.PathLike]], *,
                   allowed: tuple[tuple[str, str], ...] = ()) -> None:
    """ConfigError when two of the named folders are the same or one is inside the other.
    ``allowed``: (inner, outer) option pairs that may nest (or be equal)."""
    resolved = [(name, Path(path).resolve()) for name, path in named]
    for i, (a_name, a) in enumerate(resolved):
        for b_name, b in resolved[i + 1:]:
            for inner_name, inner, outer_name, outer in ((a_name, a, b_name, b), (b_name, b, a_name, a)):
                if not inside(inner, outer) or (inner_name, outer_name) in allowed \
                        or (inner == outer and (outer_name, inner_name) in allowed):
                    continue
                what = (f"{inner_name} and {outer_name} are the same folder ({inner})" if inner == outer
                        else f"{inner_name} ({inner}) is inside {outer_name} ({outer})")
                raise ConfigError(f"{what}: one would overwrite or delete the other. Use separate folders"
                                  + (" (only --working_dir may be inside --output_dir)"
                                     if ("--working_dir", "--output_dir") in allowed else "") + ".")


def check_inputs_outside(outputs: list[tuple[str, str | os.PathLike]],
                         inputs: list[tuple[str, str | os.PathLike]]) -> None:
    """ConfigError when an input (a local file or folder the run reads) or the current
    directory lies inside an output folder that airo may replace or clean."""
    cwd = Path.cwd()
    for out_name, out in outputs:
        for in_name, path in [*inputs, ("the current directory", cwd)]:
            if path and Path(path).exists() and inside(path, out):
                raise ConfigError(f"{in_name} ({Path(path).resolve()}) is inside {out_name} ({Path(out).resolve()}): "
                                  "airo replaces that folder as a whole and would delete it. Choose an output "
                                  "folder outside it.")


# -- writing a folder at once -----------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _remove_stale_siblings(target: Path) -> None:
    """Remove ``.NAME.airo-tmp-PID`` / ``.NAME.airo-old-PID`` left beside ``target`` by a
    process that is gone. An ``old`` folder with no ``target`` (a crash between the two
    renames) is the previous output: it is put back, whatever its pid says (the caller holds
    the target's lock, so no writer is between the renames now, and pids get reused)."""
    if not target.parent.is_dir():
        return
    for kind in ("old", "tmp"):
        prefix = f".{target.name}.airo-{kind}-"
        for path in sorted(target.parent.iterdir()):
            tail = path.name[len(prefix):] if path.name.startswith(prefix) else ""
            if not tail.isdigit():
                continue
            if kind == "old" and not target.exists() and path.is_dir() and not path.is_symlink():
                os.replace(path, target)
                continue
            if _pid_alive(int(tail)):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, kind: str = "output", keep_existing: bool = False,
                     preserve: tuple[str | os.PathLike, ...] = (), markers: tuple[str, ...] = (),
                     what: str = "folder") -> Iterator[Path]:
    """Write a folder all at once: yield a temp folder beside ``target``, then swap it in.

    The new folder is stamped (``kind``) and fsynced before the swap; if the swap fails the
    previous folder is put back. With ``keep_existing`` (the target also holds the working
    dir, named in ``preserve``) the new files are moved in one by one and everything else
    of the previous output is removed: that mode is not atomic (a crash mid-move leaves a
    mix), which is why only a working dir inside the output dir uses it. A target airo may
    not replace (see :func:`check_replaceable`) is refused before anything is written, and
    checked again before the swap. The target is locked for the write (see
    :mod:`airo.core.lock`). Temp folders left by dead processes are removed on entry.
    """
    from .lock import folder_lock

    check_replaceable(target, what=what, markers=markers)
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(target, what=what):
        _remove_stale_siblings(target)
        tmp = target.parent / f".{target.name}.airo-tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            yield tmp
            stamp(tmp, kind)
            fsync_tree(tmp)
            check_replaceable(target, what=what, markers=markers)  # again: it may have changed while we wrote
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if keep_existing and target.exists():
            kept = {Path(p).resolve() for p in preserve}
            new = {item.name for item in tmp.iterdir()}
            for stale in target.iterdir():  # the previous output's files this one does not have
                if stale.name not in new and stale.resolve() not in kept and not any(
                        k.is_relative_to(stale.resolve()) for k in kept):
                    shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
            for item in tmp.iterdir():
                dest = target / item.name
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                os.replace(item, dest)
            tmp.rmdir()
            fsync_dir(target)
            return
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.airo-old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None and not target.exists():
                os.replace(old, target)  # the previous output, back where it was
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
