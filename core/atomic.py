"""Folders airo writes: owned, written all at once, durable, and never a user's.

This module is the one place writers import from. Ownership (kinds, stamps, what may be
replaced) is :mod:`airo.core.ownership`; the durable, link-refusing file writes are
:mod:`airo.core.durable`; here are the checks that folders lie apart, and
:func:`atomic_directory`, which writes a folder whole.

Atomicity. :func:`atomic_directory` writes into a temp folder beside the target and
swaps it in with renames, so a crash leaves the previous output (or nothing), never a
half-written one. Durability: files are fsynced, then their folder, before a rename or a
marker makes them count (:func:`fsync_tree`, :func:`write_json`), so a power loss cannot
leave an empty file that is marked complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from . import ownership
from .durable import (SymlinkRefused, fsync_dir, fsync_file, fsync_tree, open_exclusive, read_json_dict, write_json,
                      write_text)
from .errors import ConfigError
from .ownership import (_RUN, CONTAINER_KINDS, KIND_CHECKPOINT, KIND_DATASET_CACHE, KIND_MERGED, KIND_OUTPUT,
                        KIND_PREPROCESSED, KIND_TEXT, KIND_WORKING_DIR, NESTED_KINDS, OWNER_STAMP,
                        _TRANSIENT, Stamp, begin_run, check_replaceable, claim_folder, current_run,
                        foreign_entries, is_owned, owned_entries, read_stamp, register_kind, remove_owned, stamp,
                        _remove_listed)


# what writers import from here (``KINDS`` through __getattr__: plugins add kinds)
__all__ = [
    "CONTAINER_KINDS", "KIND_CHECKPOINT", "KIND_DATASET_CACHE", "KIND_MERGED", "KIND_OUTPUT", "KIND_PREPROCESSED",
    "KIND_TEXT", "KIND_WORKING_DIR", "NESTED_KINDS", "OWNER_STAMP", "Stamp", "SymlinkRefused",
    "atomic_directory", "begin_run", "check_inputs_outside", "check_replaceable", "check_separate", "claim_folder",
    "current_run", "foreign_entries", "fsync_dir", "fsync_file", "fsync_tree", "inside", "is_owned",
    "open_exclusive", "owned_entries", "read_json_dict", "read_stamp", "register_kind", "remove_owned", "stamp",
    "write_json", "write_text", "_RUN",
]


def __getattr__(name: str) -> Any:
    if name == "KINDS":  # grows as plugins register kinds: always the current tuple
        return ownership.KINDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def _clear(path: Path) -> None:
    """Remove a leftover of ours at ``path``: a folder (not through a link), a file or a link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _move_in(tmp: Path, target: Path, kind: str, preserve: Iterable[str | os.PathLike]) -> None:
    """The file-by-file mode of :func:`atomic_directory`: the previous output's files (those
    its stamp lists) that the new one does not have are removed, the new ones moved in;
    anything else (the preserved working dir, a lock, what the stamp does not list) stays."""
    kept = {Path(p).resolve() for p in preserve}
    new = set(read_stamp(tmp).files or ())
    old = read_stamp(target)
    if old is None or old.files is None:  # an older stamp: it owns everything but the preserved folders
        previous = {e for e in owned_entries(target) if not _TRANSIENT.match(PurePosixPath(e.rstrip("/")).name)
                    and not any(k.is_relative_to(target / e.rstrip("/")) or (target / e.rstrip("/")).is_relative_to(k)
                                for k in kept)}
    else:
        previous = set(old.files)
    # a crash part-way leaves every file airo has there listed
    stamp(target, kind, files=previous | new)
    _remove_listed(target, previous - new, kept)
    for item in sorted(tmp.iterdir()):
        if item.name == OWNER_STAMP:
            continue
        dest = target / item.name
        if dest in kept or any(k.is_relative_to(dest) for k in kept):
            raise ConfigError(f"cannot save {item.name} into {target}: it would replace {dest}, which the run uses")
        if os.path.lexists(dest):
            if dest.is_dir() and not dest.is_symlink():
                _remove_listed(target, [e for e in previous if e.startswith(item.name + "/")], kept)
                if os.path.lexists(dest):
                    raise ConfigError(f"cannot save {item.name} into {target}: {dest} holds files airo did not "
                                      "write there; move them out and run again")
            else:
                os.unlink(dest)
        os.replace(item, dest)
    os.replace(tmp / OWNER_STAMP, target / OWNER_STAMP)
    tmp.rmdir()
    fsync_dir(target)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, kind: str = KIND_OUTPUT, keep_existing: bool = False,
                     preserve: tuple[str | os.PathLike, ...] = (), markers: tuple[str, ...] = (),
                     what: str = "folder", nest_in: tuple[str | os.PathLike, ...] = ()) -> Iterator[Path]:
    """Write a folder all at once: yield a temp folder beside ``target``, then swap it in.

    The new folder is stamped (``kind``, and every file written into it) and fsynced before
    the swap; if the swap fails the previous folder is put back. With ``keep_existing`` (the
    target also holds the working dir, named in ``preserve``) the new files are moved in one
    by one, the previous output's listed files removed, and everything else stays: that
    mode is not atomic (a crash mid-move leaves a mix, all of it listed), which is why only
    a working dir inside the output dir uses it. A target airo may not replace (see
    :func:`check_replaceable`) is refused before anything is written, and checked again
    before the swap (also that no link now redirects it). The target is locked for the
    write (see :mod:`airo.core.lock`). Temp folders left by dead processes are removed on entry.
    """
    from .lock import folder_lock

    check = {"kind": kind, "what": what, "markers": markers, "nest_in": nest_in,
             "preserve": preserve if keep_existing else ()}
    check_replaceable(target, **check)
    spelt = Path(target).absolute()
    target = spelt.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(target, what=what):
        _remove_stale_siblings(target)
        tmp = target.parent / f".{target.name}.airo-tmp-{os.getpid()}"
        _clear(tmp)
        tmp.mkdir()
        try:
            yield tmp
            stamp(tmp, kind, files=owned_entries(tmp))
            fsync_tree(tmp)
            # again: it may have changed while we wrote (a file added, a folder swapped for a link)
            if spelt.resolve() != target:
                raise SymlinkRefused(f"the {what} {spelt} now leads to {spelt.resolve()}, not {target}: a folder on its "
                                     "path was replaced by a symbolic link; airo does not write through links")
            check_replaceable(spelt, **check)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if keep_existing and target.exists():
            _move_in(tmp, target, kind, preserve)
            return
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.airo-old-{os.getpid()}"
            _clear(old)
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
