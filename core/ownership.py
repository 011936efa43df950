"""Which folders are airo's to replace: kinds, stamps, and the checks every writer goes through.

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
from typing import Any, Iterable

from .durable import _NOFOLLOW, SymlinkRefused, _link_text, _real_dir, write_json
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
# airo's own short-lived files beside a folder: locks, temp files and folders, probes
_TRANSIENT = re.compile(r"^\.(?:.+\.airo-(?:lock|tmp-\d+|old-\d+)|airo-probe-.*)$")


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
    from .version import __version__

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
