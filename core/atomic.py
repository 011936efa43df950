"""Folders airo writes: owned, written all at once, durable, and never a user's.

Ownership. Every folder airo creates carries a stamp file, :data:`OWNER_STAMP`, recording
its **kind** (one of :data:`KINDS`), the run that made it, and the files airo wrote into it
(relative paths, folders ending in ``/``; written when the folder is complete: by
:func:`atomic_directory` at the swap, for a checkpoint when it is marked complete). Every
command that writes, replaces or deletes a folder goes through :func:`check_replaceable`:

- a folder that does not exist, or an empty one, may be written;
- a folder without a stamp that holds anything is refused, whatever it holds (a
  ``config.json`` is no proof: a user's folder may hold one);
- a stamp of another kind is refused (a merge never replaces a working dir, a preprocess
  never an adapter), naming the folder, its kind and what the command wanted;
- a folder holding anything its stamp does not list (a user's file, another run's folder)
  is refused before anything runs, naming what it holds: replacing it would delete them.
  Replacing or deleting an owned folder removes only the files its stamp lists
  (:func:`remove_owned`, and the file-by-file mode of :func:`atomic_directory`);
- a folder inside a folder airo stamped is refused (replacing or cleaning that folder
  would delete it), except the one layout the docs show: the working dir inside the run's
  own output dir.

Stamps without a file list (written by earlier versions, and the working dir's, which
airo adds to over a run and never replaces or deletes whole) own everything in their
folder, except folders inside it stamped with another kind (a checkpoint in a working dir
is its own). A stamp without a kind (before kinds existed) is taken as the kind the
command writes.

No write follows a symbolic link: an output, working dir or checkpoint that is a link is
refused (replacing it would replace the folder it points to), files are created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (:func:`open_exclusive`), and a stamp, marker or temp
file swapped for a link is refused, not written through (:class:`SymlinkRefused`).

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
import re
import shutil
import socket
import stat
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from .errors import ConfigError

OWNER_STAMP = ".airo-owned"

# The kinds of folder airo writes: one closed set (stamp() refuses any other).
KIND_WORKING_DIR = "working dir"
KIND_CHECKPOINT = "checkpoint"
KIND_OUTPUT = "output"
KIND_MERGED = "merged model"
KIND_PREPROCESSED = "preprocessed dataset"
KIND_DATASET_CACHE = "dataset cache"
KINDS = (KIND_WORKING_DIR, KIND_CHECKPOINT, KIND_OUTPUT, KIND_MERGED, KIND_PREPROCESSED, KIND_DATASET_CACHE)
KIND_TEXT = {KIND_WORKING_DIR: "a run's working dir", KIND_CHECKPOINT: "a checkpoint of a run",
             KIND_OUTPUT: "a run's output (an adapter or model)", KIND_MERGED: "a merged model",
             KIND_PREPROCESSED: "an `airo preprocess` output", KIND_DATASET_CACHE: "a tokenized-dataset cache entry"}


def register_kind(kind: str, text: str) -> str:
    """A kind of folder a plugin writes (e.g. an export), stamped and checked like airo's own;
    ``text`` names it in messages ("a GGUF export"). Returns ``kind``."""
    global KINDS
    if kind not in KINDS:
        KINDS = (*KINDS, kind)
        KIND_TEXT[kind] = text
    return kind


# the kinds whose stamps list no files: airo adds to them over a run and never replaces them whole
CONTAINER_KINDS = (KIND_WORKING_DIR,)
# the kinds a folder of a kind may hold as folders of their own
NESTED_KINDS = {KIND_WORKING_DIR: (KIND_CHECKPOINT,)}

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# airo's own short-lived files beside a folder: locks, temp files and folders, probes
_TRANSIENT = re.compile(r"^\.(?:.+\.airo-(?:lock|tmp-\d+|old-\d+)|airo-probe-.*)$")


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


# -- ownership -------------------------------------------------------------------------------

_RUN: dict[str, str] = {}


def current_run() -> dict[str, str]:
    """This process's run: ``id`` (and ``working_dir`` in a training run), recorded in its stamps."""
    if "id" not in _RUN:
        _RUN["id"] = uuid.uuid4().hex[:12]
    return _RUN


def begin_run(working_dir: str | os.PathLike) -> str:
    """Stamps written from now on name the run of ``working_dir`` (the id its stamp records:
    a resumed run keeps it)."""
    owner = read_stamp(working_dir)
    run = owner.run if owner is not None and owner.run else current_run()["id"]
    _RUN.clear()
    _RUN.update(id=run, working_dir=str(Path(working_dir).resolve()))
    return run


@dataclass(frozen=True)
class Stamp:
    """What a folder's stamp says. ``files``: what airo wrote there (None: everything in it)."""

    kind: str | None
    files: frozenset[str] | None
    run: str | None = None
    working_dir: str | None = None
    unreadable: bool = False

    def describe(self) -> str:
        text = f"{KIND_TEXT.get(self.kind, repr(self.kind)) if self.kind else 'a folder'} airo wrote"
        if self.run:
            text += f" (run {self.run}" + (f", working dir {self.working_dir}" if self.working_dir else "") + ")"
        return text


def read_stamp(folder: str | os.PathLike, markers: tuple[str, ...] = ()) -> Stamp | None:
    """The stamp of ``folder``, or None when it has none (a link is no folder, and a stamp
    that is a link is no stamp). ``markers``: airo-only file names that older versions
    wrote before the stamp existed (they own everything, of any kind)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return None
    try:
        fd = os.open(folder / OWNER_STAMP, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        if any((folder / m).is_file() and not (folder / m).is_symlink() for m in markers):
            return Stamp(kind=None, files=None)
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(16 * 1024 ** 2).decode("utf-8"))
    except (OSError, ValueError):
        return Stamp(kind=None, files=None, unreadable=True)
    if not isinstance(data, dict):
        return Stamp(kind=None, files=None, unreadable=True)
    files = data.get("files")
    files = frozenset(f for f in files if isinstance(f, str)) if isinstance(files, list) else None
    kind = data.get("kind") if isinstance(data.get("kind"), str) else None
    return Stamp(kind=kind, files=files, run=data.get("run") if isinstance(data.get("run"), str) else None,
                 working_dir=data.get("working_dir") if isinstance(data.get("working_dir"), str) else None)


def owned_entries(folder: str | os.PathLike) -> list[str]:
    """Every entry below ``folder`` (relative, ``/``-separated; folders end in ``/``), the
    stamp excepted: what a stamp lists once airo has written the folder. Links are entries,
    never followed."""
    folder = Path(folder)
    entries = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for name in dirs:
            entries.append((rel / name).as_posix() + ("" if os.path.islink(os.path.join(root, name)) else "/"))
        entries += [(rel / name).as_posix() for name in files]
    return sorted(e for e in entries if e != OWNER_STAMP)


def stamp(folder: str | os.PathLike, kind: str, *, files: Iterable[str] | None = None) -> None:
    """Mark ``folder`` as airo's: its kind, the run, who wrote it and when, and (``files``)
    what airo wrote into it. A folder that is a link is refused."""
    from . import __version__

    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}; airo's kinds are {', '.join(KINDS)}")
    folder = Path(folder)
    _real_dir(folder, kind)
    run = current_run()
    data: dict[str, Any] = {"kind": kind, "run": run["id"], "airo_version": __version__, "pid": os.getpid(),
                            "host": socket.gethostname(), "command": " ".join(sys.argv)[:500],
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if run.get("working_dir"):
        data["working_dir"] = run["working_dir"]
    if files is not None:
        data["files"] = sorted(set(files) - {OWNER_STAMP})
    write_json(folder / OWNER_STAMP, data)


def is_owned(folder: str | os.PathLike, markers: tuple[str, ...] = ()) -> bool:
    """Whether airo wrote ``folder``: it holds the stamp (or one of ``markers``, airo-only
    file names that older versions wrote before the stamp existed)."""
    folder = Path(folder)
    return folder.is_dir() and not folder.is_symlink() and any(
        (folder / name).is_file() and not (folder / name).is_symlink() for name in (OWNER_STAMP, *markers))


def _listed(owner: Stamp, rel: str) -> bool:
    """Whether the stamp lists the entry ``rel`` (a folder counts when it lists something in it)."""
    assert owner.files is not None
    if rel in owner.files:
        return True
    prefix = rel.rstrip("/") + "/"
    return prefix in owner.files or any(f.startswith(prefix) for f in owner.files)


def foreign_entries(folder: str | os.PathLike, owner: Stamp, *, preserve: Iterable[str | os.PathLike] = (),
                    limit: int = 50) -> list[str]:
    """What ``folder`` holds that its stamp does not make airo's to remove: files it does not
    list, and folders stamped with another kind (each with what it is). Entries inside
    ``preserve`` (the run's working dir inside its output dir) and airo's own locks and
    temp files are left out."""
    folder = Path(folder)
    kept = {Path(p).resolve() for p in preserve}
    if folder.resolve() in kept:
        return []
    nested_ok = NESTED_KINDS.get(owner.kind or "", ())
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        rel_root = here.relative_to(folder)
        for name in sorted(dirs):
            path = here / name
            rel = (rel_root / name).as_posix()
            if _TRANSIENT.match(name) or path in kept:
                dirs.remove(name)
                continue
            if any(k.is_relative_to(path) for k in kept):
                continue  # a folder on the way to the preserved one: look inside it
            inner = read_stamp(path)
            if inner is not None and inner.kind not in nested_ok:
                found.append(f"{rel}/ ({inner.describe()})")
                dirs.remove(name)
            elif inner is not None or os.path.islink(path) and owner.files is None:
                dirs.remove(name)  # a checkpoint in a working dir: its own; a link is not followed
            elif owner.files is not None and not _listed(owner, rel + ("" if os.path.islink(path) else "/")):
                found.append(rel + ("" if os.path.islink(path) else "/"))
                dirs.remove(name)
        if owner.files is not None:
            for name in sorted(files):
                rel = (rel_root / name).as_posix()
                if rel != OWNER_STAMP and not _TRANSIENT.match(name) and rel not in owner.files:
                    found.append(rel)
        if len(found) >= limit:
            break
    return found


def _check_ancestors(resolved: Path, what: str, nest_in: Iterable[str | os.PathLike]) -> None:
    """ConfigError when a folder above ``resolved`` is stamped (replacing or cleaning it
    would delete ``resolved``), except the folders in ``nest_in``."""
    allowed = {Path(p).resolve() for p in nest_in if p}
    for parent in resolved.parents:
        if parent in allowed or not os.path.lexists(parent / OWNER_STAMP):
            continue
        owner = read_stamp(parent)
        if owner is not None:
            raise ConfigError(f"the {what} {resolved} is inside {parent}, {owner.describe()}: airo replaces or "
                              "cleans that folder and would delete what is inside it. Choose a folder outside it.")


def check_replaceable(target: str | os.PathLike, *, kind: str | tuple[str, ...] | None = None,
                      what: str = "folder", markers: tuple[str, ...] = (),
                      preserve: Iterable[str | os.PathLike] = (), nest_in: Iterable[str | os.PathLike] = ()) -> None:
    """ConfigError unless airo may write ``target`` as a whole. Every command that writes,
    replaces or deletes a folder calls it before anything runs (and :func:`atomic_directory`
    again before its swap). ``target`` may be written when it:

    - is not a symbolic link, and no file stands in its path;
    - is not inside a folder airo stamped (but those in ``nest_in``);
    - does not exist, is empty, or is stamped by airo with one of the kinds ``kind`` (a
      stamp without a kind passes), and holds nothing its stamp does not list (but what is
      inside ``preserve``, and airo's own locks and temp files).
    """
    raw = Path(target).absolute()
    if raw.is_symlink():
        raise SymlinkRefused(f"the {what} {_link_text(raw)}; airo does not write through links, since replacing "
                             "one would replace the folder it points to. Give the real path of a new or empty folder.")
    resolved = raw.resolve()
    for parent in [resolved, *resolved.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot write the {what} {resolved}: {parent} is a file, not a folder")
            break
    _check_ancestors(resolved, what, nest_in)
    if not resolved.exists() or all(_TRANSIENT.match(name) for name in os.listdir(resolved)):
        return  # new, or empty but for airo's own locks and temp files
    owner = read_stamp(resolved, markers)
    if owner is None:
        raise ConfigError(f"the {what} {resolved} already exists and holds files airo did not write (no "
                          f"{OWNER_STAMP} stamp); airo replaces that folder as a whole and will not touch them. "
                          "Choose a new folder, or empty this one.")
    if owner.unreadable:
        raise ConfigError(f"the {what} {resolved} has an unreadable {OWNER_STAMP} stamp, so airo cannot tell what "
                          "it is and will not touch it. Choose another folder.")
    accepted = (kind,) if isinstance(kind, str) else tuple(kind or ())
    if accepted and owner.kind is not None and owner.kind not in accepted:
        raise ConfigError(f"the {what} {resolved} is {owner.describe()}; this command writes "
                          f"{KIND_TEXT.get(accepted[0], accepted[0])} there and never replaces "
                          f"{KIND_TEXT.get(owner.kind, owner.kind)}. Choose another folder.")
    foreign = foreign_entries(resolved, owner, preserve=preserve)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(f"the {what} {resolved} holds what airo did not write there: {shown}; airo replaces "
                          "that folder and will not delete them. Move them out, or choose another folder.")


def claim_folder(target: str | os.PathLike, *, kind: str, what: str = "folder",
                 accept: tuple[str, ...] | None = None, files: Iterable[str] | None = None,
                 preserve: Iterable[str | os.PathLike] = (), nest_in: Iterable[str | os.PathLike] = ()) -> Path:
    """Create (or adopt an empty) ``target`` and stamp it ``kind`` (``files``: what it lists;
    None for a container), or accept one airo already stamped with a kind in ``accept``
    (default: ``kind``). Anything else is refused (see :func:`check_replaceable`), untouched."""
    check_replaceable(target, kind=accept or kind, what=what, preserve=preserve, nest_in=nest_in)
    path = Path(target).resolve()
    path.mkdir(parents=True, exist_ok=True)
    if read_stamp(path) is None:
        stamp(path, kind, files=files)
    return path


def _safe_child(folder: Path, rel: str) -> Path | None:
    """``folder / rel`` when ``rel`` stays inside ``folder`` through real folders (no ``..``,
    no link on the way); else None."""
    parts = PurePosixPath(rel.rstrip("/")).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("", ".", "..") for p in parts):
        return None
    path = folder
    for part in parts[:-1]:
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
        except OSError:
            return None
    return path / parts[-1]


def _remove_listed(folder: Path, entries: Iterable[str], kept: Iterable[Path] = ()) -> None:
    """Remove the listed entries of ``folder``: files (a link itself, never what it points
    to), then folders once empty, deepest first. Nothing in ``kept``; nothing else."""
    kept = {Path(k) for k in kept}
    entries = list(entries)
    for rel in entries:
        if rel.endswith("/"):
            continue
        path = _safe_child(folder, rel)
        if path is None or path in kept or any(k.is_relative_to(path) for k in kept):
            continue
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                continue  # listed as a file, now a folder: not airo's
            os.unlink(path)
        except FileNotFoundError:
            pass
    for rel in sorted((e for e in entries if e.endswith("/")), key=lambda e: e.count("/"), reverse=True):
        path = _safe_child(folder, rel)
        if path is not None and path not in kept:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only when empty; never a link


def remove_owned(folder: str | os.PathLike, *, what: str = "folder") -> list[str]:
    """Delete what airo wrote in ``folder`` (what its stamp lists; everything when it lists
    nothing, as older stamps), then the folder once empty. Returns what is left: a user's
    files survive, and the stamp then lists nothing more. A link or an unstamped folder is
    left as it is."""
    folder = Path(folder)
    if folder.is_symlink():
        return [f"{folder.name} (a symbolic link)"]
    owner = read_stamp(folder)
    if owner is None or owner.unreadable:
        return sorted(os.listdir(folder)) if folder.is_dir() else []
    if owner.files is None:
        shutil.rmtree(folder)
        return []
    _remove_listed(folder, owner.files)
    left = owned_entries(folder)
    if left:
        stamp(folder, owner.kind or KIND_OUTPUT, files=())
        return left
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / OWNER_STAMP)
    with contextlib.suppress(OSError):
        os.rmdir(folder)
    return []


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
