"""Writing output folders so that a crash never leaves a half-written one, and never
deleting a folder that is not airo's to delete."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import ConfigError

# A folder airo may replace as a whole: empty, or holding one of these (a model, an adapter,
# an airo output). Anything else is a user's folder and is never deleted.
ARTIFACT_MARKERS = ("adapter_config.json", "config.json", "airo_training.json", "airo_merge.json",
                    "airo_preprocessed.json")


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
    process that is gone. A stale ``old`` folder with no ``target`` (a crash between the two
    renames) is the previous output: it is put back instead."""
    if not target.parent.is_dir():
        return
    for kind in ("old", "tmp"):
        prefix = f".{target.name}.airo-{kind}-"
        for path in sorted(target.parent.iterdir()):
            tail = path.name[len(prefix):] if path.name.startswith(prefix) else ""
            if not tail.isdigit() or _pid_alive(int(tail)):
                continue
            if kind == "old" and not target.exists() and path.is_dir():
                os.replace(path, target)
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def check_replaceable(target: str | os.PathLike, *, markers=ARTIFACT_MARKERS, what: str = "folder") -> None:
    """ConfigError unless airo may write ``target`` as a whole: it does not exist, or is an
    empty folder, or a folder holding one of ``markers``; no file stands in its path."""
    target = Path(target).resolve()
    for parent in [target, *target.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ConfigError(f"cannot write the {what} {target}: {parent} is a file, not a folder")
            break
    if markers and target.is_dir() and any(target.iterdir()) \
            and not any((target / m).exists() for m in markers):
        raise ConfigError(f"the {what} {target} already exists and holds files that are not a model, an adapter or "
                          f"an airo output (none of {', '.join(markers)}); airo replaces that folder as a whole and "
                          "will not delete them. Choose another folder, or empty this one.")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, keep_existing: bool = False,
                     markers: tuple[str, ...] | None = ARTIFACT_MARKERS) -> Iterator[Path]:
    """Write a folder all at once: yield a temp folder beside ``target``, then swap it in.

    A crash leaves the previous ``target`` (or nothing), never a half-written one. With
    ``keep_existing`` (the target also holds other things, e.g. the working dir) files are
    moved in one by one instead, replacing same-named ones. An existing non-empty
    ``target`` without one of ``markers`` is refused (ConfigError): it is not airo's to
    delete. Temp folders left by dead processes are removed on entry.
    """
    target = Path(target).resolve()
    check_replaceable(target, markers=None if keep_existing else markers)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(target)
    tmp = target.parent / f".{target.name}.airo-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_existing and target.exists():
        for item in tmp.iterdir():
            dest = target / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
        tmp.rmdir()
        return
    try:
        check_replaceable(target, markers=markers)  # again: it may have changed while we wrote
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.airo-old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
