"""Ownership: airo changes only what it owns, and says what it owns.

A generated fault-injection matrix: every command that writes a folder (``airo train``'s
working dir, ``--output_dir`` and ``--merged_output_dir``, ``airo merge --out``, ``airo
preprocess --output``, ``airo new-plugin``) x every state the location can be in (missing,
empty, stamped with the command's kind, stamped with each other kind, a user's folder, a
link to a folder or a file, a file, inside a folder of each kind, holding a folder of each
kind, an input, locked by another run, spelt relatively / with ``..`` / a trailing slash).
Each case asserts the outcome (allowed or refused), the exit code, a one-line message
naming the folder, and that every file outside airo's own stamps is byte-for-byte as it
was. The refusals happen before any model loads, so the commands run in-process; an
allowed command is stopped right after its folder checks (and, for ``train``, after its
locks and stamps). Below the matrix: unit tests of the no-follow writes and the lock, and
end-to-end checks with real runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import EXAMPLES

import airo.plugins.export  # noqa: F401,E402 - registers a plugin's folder kind: the matrix covers it too
from airo.core import atomic
from airo.core.atomic import (KIND_CHECKPOINT, KIND_DATASET_CACHE, KIND_MERGED, KIND_OUTPUT, KIND_PREPROCESSED,
                              KIND_TEXT, KIND_WORKING_DIR, KINDS, OWNER_STAMP, stamp)
from airo.core.errors import AiroError

CONVERSATIONS = EXAMPLES / "data" / "conversations.json"
STOPPED = 97


class _Stopped(AiroError):
    """Raised where an allowed command would go on to load a model."""

    exit_code = STOPPED


# -- the commands --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Writer:
    name: str
    kind: str | None  # the kind it writes (None: a folder airo does not own, new-plugin)
    accepts: tuple[str, ...]  # stamped kinds it may replace
    nested_ok: tuple[str, ...] = ()  # kinds a folder it writes may hold (a working dir: checkpoints)
    locks: bool = False  # takes its locks before the point where it is stopped
    spellings: bool = True


TRAIN_WD = Writer("train --working_dir", KIND_WORKING_DIR, (KIND_WORKING_DIR,), (KIND_CHECKPOINT,), locks=True)
TRAIN_OUT = Writer("train --output_dir", KIND_OUTPUT, (KIND_OUTPUT,), locks=True)
TRAIN_MERGED = Writer("train --merged_output_dir", KIND_MERGED, (KIND_MERGED,), locks=True)
MERGE = Writer("merge --out", KIND_MERGED, (KIND_MERGED,))
PREPROCESS = Writer("preprocess --output", KIND_PREPROCESSED, (KIND_PREPROCESSED,))
NEW_PLUGIN = Writer("new-plugin --dir", None, (), spellings=False)
WRITERS = (TRAIN_WD, TRAIN_OUT, TRAIN_MERGED, MERGE, PREPROCESS, NEW_PLUGIN)


def _train_flags(model: str, root: Path, **folders) -> list[str]:
    flags = {"--output_dir": str(root / "run-out"), "--working_dir": str(root / "run-work"), **folders}
    return ["train", "--model_name_or_path", model, "--dataset", str(root / "data" / "train.json"),
            "--dataset_format", "airoboros_chat", "--model_max_len", "128", "--lora_r", "4", "--bits", "16",
            "--eval_dataset_size", "0", "--report_to", "none", "--max_steps", "1",
            *[x for k, v in flags.items() for x in (k, v)]]


def _argv(writer: Writer, target: str, model: str, root: Path) -> list[str]:
    if writer is TRAIN_WD:
        return _train_flags(model, root, **{"--working_dir": target})
    if writer is TRAIN_OUT:
        return _train_flags(model, root, **{"--output_dir": target})
    if writer is TRAIN_MERGED:
        return _train_flags(model, root, **{"--merged_output_dir": target})
    if writer is MERGE:
        return ["merge", "--base", model, "--adapter", str(root / "adapter"), "--out", target]
    if writer is PREPROCESS:
        return ["preprocess", "--model_name_or_path", model, "--dataset", str(root / "data" / "train.json"),
                "--dataset_format", "airoboros_chat", "--model_max_len", "128", "--output", target]
    assert writer is NEW_PLUGIN and Path(target).name == "airo-demo"
    return ["new-plugin", "demo", "--dir", str(Path(target).parent)]


@pytest.fixture
def stop_after_checks(monkeypatch):
    """Stop each command where, allowed, it would go on to load something."""
    from airo.core.data import preprocess
    from airo.core.training import folders
    from airo.plugins import merging

    def after(real):
        def wrapper(*args, **kwargs):
            real(*args, **kwargs)
            raise _Stopped("stopped after the folder checks")
        return wrapper

    monkeypatch.setattr(folders, "claim_run_folders", after(folders.claim_run_folders))
    monkeypatch.setattr(merging, "check_merge_folders", after(merging.check_merge_folders))
    monkeypatch.setattr(preprocess, "check_preprocess_output", after(preprocess.check_preprocess_output))


def run_airo(argv: list[str]) -> tuple[int, str, str]:
    """``airo ARGV`` in this process: (exit code, stdout, stderr)."""
    from airo.core.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


# -- the locations ---------------------------------------------------------------------------------

def make_owned(path: Path, kind: str) -> Path:
    """A folder as airo leaves one of ``kind``: its files, stamped (listing them; a working
    dir lists none, it is a container)."""
    path.mkdir(parents=True, exist_ok=True)
    names = {KIND_WORKING_DIR: ["metrics.jsonl"], KIND_CHECKPOINT: ["adapter_model.safetensors", "trainer_state.json"],
             KIND_OUTPUT: ["adapter_config.json", "adapter_model.safetensors"],
             KIND_MERGED: ["config.json", "model.safetensors"],
             KIND_PREPROCESSED: ["dataset_dict.json", "airo_preprocessed.json"],
             KIND_DATASET_CACHE: ["dataset_dict.json", "airo_preprocessed.json"]}.get(kind, ["written.bin"])
    for name in names:
        (path / name).write_text(f"{kind} {name}")
    stamp(path, kind, files=None if kind == KIND_WORKING_DIR else names)
    return path


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")  # looks like a model: no proof of anything
    (path / "thesis.tex").write_text("years of work")
    return path


@dataclass(frozen=True)
class State:
    name: str
    build: Callable[[Path, Path, Writer], str]  # (root, model, writer) -> the target as spelt
    allowed: Callable[[Writer], bool]
    message: str = ""  # a fragment the refusal names
    only: Callable[[Writer], bool] = lambda w: True


def _loc(root: Path, writer: Writer) -> Path:
    return root / ("airo-demo" if writer is NEW_PLUGIN else "loc")


def _never(w: Writer) -> bool:
    return False


def _only_new(w: Writer) -> bool:
    return w is not NEW_PLUGIN


def _states() -> list[State]:
    states = [
        State("missing", lambda r, m, w: str(_loc(r, w)), lambda w: True),
        State("empty", lambda r, m, w: (_loc(r, w).mkdir(), str(_loc(r, w)))[1], lambda w: w is not NEW_PLUGIN,
              "exists"),
        State("user folder", lambda r, m, w: str(user_folder(_loc(r, w))), _never, ""),
        State("a file", lambda r, m, w: (_loc(r, w).write_text("mine"), str(_loc(r, w)))[1], _never, ""),
        State("link to a user folder", lambda r, m, w: _link(r, w, user_folder(r / "elsewhere")), _never, ""),
        State("link to an empty folder", lambda r, m, w: _link(r, w, _mkdir(r / "elsewhere")), _never, ""),
        State("link to a file", lambda r, m, w: _link(r, w, _file(r / "elsewhere.txt")), _never, ""),
        State("link to its own kind", lambda r, m, w: _link(r, w, make_owned(r / "elsewhere", w.kind)), _never,
              "symbolic link", only=_only_new),
        State("own kind", lambda r, m, w: str(make_owned(_loc(r, w), w.kind)), lambda w: True, only=_only_new),
        State("own kind plus a user's file", lambda r, m, w: _with_user_file(make_owned(_loc(r, w), w.kind)),
              lambda w: w is TRAIN_WD, "notes.txt", only=_only_new),
        State("own kind with an unreadable stamp",
              lambda r, m, w: _garble(make_owned(_loc(r, w), w.kind)), _never, "unreadable", only=_only_new),
        State("the base model", lambda r, m, w: m, _never, "", only=_only_new),
        State("inside the base model", lambda r, m, w: str(Path(m) / "sub"), _never, "", only=_only_new),
        State("holding the dataset", lambda r, m, w: str(_stamp_as(r / "data", w.kind)), _never, "--dataset",
              only=lambda w: w in (TRAIN_WD, TRAIN_OUT, TRAIN_MERGED, PREPROCESS)),
        State("the adapter", lambda r, m, w: str(r / "adapter"), _never, "--adapter", only=lambda w: w is MERGE),
        State("inside the adapter", lambda r, m, w: str(r / "adapter" / "merged"), _never, "--adapter",
              only=lambda w: w is MERGE),
        State("locked by another run", lambda r, m, w: _locked(r, _loc(r, w)), _never, "another airo run",
              only=lambda w: w.locks),
        State("inside a folder another run holds", lambda r, m, w: _locked(r, _mkdir(r / "held"), "loc"), _never,
              "another airo run", only=lambda w: w.locks),
        State("holding a folder another run holds",
              lambda r, m, w: _locked(r, make_owned(_loc(r, w), w.kind) / "sub", ".."),
              _never, "another airo run", only=lambda w: w.locks),
    ]
    for kind in atomic.KINDS:  # airo's kinds and those plugins registered
        states.append(State(f"stamped {kind}", lambda r, m, w, k=kind: str(make_owned(_loc(r, w), k)),
                            lambda w, k=kind: k in w.accepts, KIND_TEXT[kind]))
        states.append(State(f"inside a {kind}", lambda r, m, w, k=kind: str(make_owned(r / "other", k) / _loc(r, w).name),
                            _never, "is inside"))
        states.append(State(f"holding a {kind}", lambda r, m, w, k=kind: _holding(r, w, k),
                            lambda w, k=kind: k in w.nested_ok, "holds", only=_only_new))
    return states


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file(path: Path) -> Path:
    path.write_text("a user's file")
    return path


def _link(root: Path, writer: Writer, to: Path) -> str:
    _loc(root, writer).symlink_to(to, target_is_directory=to.is_dir())
    return str(_loc(root, writer))


def _with_user_file(path: Path) -> str:
    (path / "notes.txt").write_text("a user's notes")
    return str(path)


def _garble(path: Path) -> str:
    (path / OWNER_STAMP).write_text("{not json")
    return str(path)


def _stamp_as(path: Path, kind: str) -> Path:
    stamp(path, kind, files=None if kind == KIND_WORKING_DIR else ["train.json"])
    return path


def _holding(root: Path, writer: Writer, kind: str) -> str:
    target = make_owned(_loc(root, writer), writer.kind)
    make_owned(target / ("checkpoint-1" if kind == KIND_CHECKPOINT else "inner"), kind)
    return str(target)


_HELD: list[int] = []


def _locked(root: Path, folder: Path, spelt: str | None = None) -> str:
    """``folder`` held by another run: its lock file flocked through a descriptor airo's
    lock table does not know (as another process's would be)."""
    import fcntl

    from airo.core.lock import lock_path

    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, json.dumps({"pid": 1, "host": "elsewhere", "command": "airo train ..."}).encode())
    fcntl.flock(fd, fcntl.LOCK_EX)
    _HELD.append(fd)
    return str(folder / spelt) if spelt == "loc" else str(folder.parent if spelt == ".." else folder)


@pytest.fixture(autouse=True)
def _release_held():
    atomic._RUN.clear()  # each test is a process of its own, as far as run ids go
    yield
    atomic._RUN.clear()
    while _HELD:
        os.close(_HELD.pop())


SPELLINGS = {
    "relative": lambda target, root: os.path.relpath(target, root),
    "with ..": lambda target, root: os.path.join(os.path.relpath(Path(target).parent, root), "x", "..",
                                                 Path(target).name),
    "trailing slash": lambda target, root: target + "/",
}
SPELT_STATES = ("missing", "empty", "own kind", "user folder", f"stamped {KIND_WORKING_DIR}", f"stamped {KIND_OUTPUT}",
                f"inside a {KIND_OUTPUT}", "link to an empty folder")


def _cases():
    states = {s.name: s for s in _states()}
    for writer in WRITERS:
        for state in states.values():
            if not state.only(writer) or (writer is NEW_PLUGIN and state.name.startswith("inside ")):
                continue  # a new plugin package inside a folder replaces nothing
            yield pytest.param(writer, state, None, id=f"{writer.name}|{state.name}")
        if writer.spellings:
            for spelling in SPELLINGS:
                for name in SPELT_STATES:
                    if states[name].only(writer):
                        yield pytest.param(writer, states[name], spelling, id=f"{writer.name}|{name}|{spelling}")


CASES = list(_cases())


# -- snapshots ---------------------------------------------------------------------------------------

def snapshot(*roots: Path) -> dict[str, object]:
    """Every entry below ``roots``: a file's bytes, a link's target, a folder."""
    seen: dict[str, object] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder) / name
                if path.is_symlink():
                    seen[str(path)] = ("link", os.readlink(path))
                elif path.is_dir():
                    seen[str(path)] = "dir"
                else:
                    seen[str(path)] = path.read_bytes()
    return seen


def airos_own(path: str) -> bool:
    return Path(path).name == OWNER_STAMP


@pytest.fixture
def world(tmp_path, tiny_model_dir, airo_env, monkeypatch, stop_after_checks):
    """A folder with a dataset, an adapter a run saved, and the tiny model (copied in, so the
    snapshot covers it)."""
    root = tmp_path / "w"
    (root / "data").mkdir(parents=True)
    shutil.copy(CONVERSATIONS, root / "data" / "train.json")
    (root / "x").mkdir()
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}))
    stamp(adapter, KIND_OUTPUT, files=["adapter_config.json"])
    monkeypatch.chdir(root)
    return root, str(model)


@pytest.mark.parametrize(("writer", "state", "spelling"), CASES)
def test_every_writer_in_every_location(writer, state, spelling, world):
    root, model = world
    target = state.build(root, model, writer)
    canonical = Path(os.path.abspath(target)).resolve() if not Path(os.path.abspath(target)).is_symlink() \
        else Path(os.path.abspath(target))
    if spelling is not None:
        target = SPELLINGS[spelling](target, str(root))
    before = snapshot(root)
    code, out, err = run_airo(_argv(writer, target, model, root))
    after = snapshot(root)
    allowed = state.allowed(writer)
    assert "Traceback" not in err and "internal error" not in err, err
    if allowed:
        expected = 0 if writer is NEW_PLUGIN else STOPPED
        assert code == expected, (code, err)
        changed = [p for p, v in before.items() if after.get(p) != v and not airos_own(p)]
        assert not changed, f"allowed, yet changed {changed}"
        return
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, (code, err)
    assert len(errors) == 1 and err.strip() == errors[0], err  # one line, and only that
    shown = str(canonical).rstrip("/")
    assert shown in errors[0] or str(canonical.parent) in errors[0] or model in errors[0], errors[0]
    assert ("already exists" if writer is NEW_PLUGIN else state.message) in errors[0], errors[0]
    if state.name.startswith("stamped ") and writer is not NEW_PLUGIN:  # the kind found, and the one the command writes
        assert writer.kind is None or KIND_TEXT[writer.kind] in errors[0], errors[0]
    assert after == before, "a refused command changed files"


def test_the_matrix_is_generated_not_listed():
    """Every writer meets every state that applies to it (the count is in docs/reliability.md)."""
    assert len(CASES) >= 250
    per_writer = {w.name: sum(1 for c in CASES if c.values[0] is w) for w in WRITERS}
    assert min(per_writer.values()) >= 10, per_writer


# -- the mechanism, unit by unit ---------------------------------------------------------------------

def test_write_text_never_follows_a_link(tmp_path):
    """A link planted at the file, or at its temp file's name, is refused; what it points to
    is untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "marker.json"
    link.symlink_to(victim)
    with pytest.raises(atomic.SymlinkRefused, match="symbolic link"):
        atomic.write_json(link, {"x": 1})
    tmp = tmp_path / f".other.json.airo-tmp-{os.getpid()}"
    tmp.symlink_to(victim)
    with pytest.raises(atomic.SymlinkRefused, match="symbolic link"):
        atomic.write_json(tmp_path / "other.json", {"x": 1})
    assert victim.read_text() == "precious" and link.is_symlink() and tmp.is_symlink()
    assert not (tmp_path / "other.json").exists()
    # a regular file left at the temp name (a crash) is replaced, not refused
    tmp.unlink()
    tmp.write_text("left by a crash")
    atomic.write_json(tmp_path / "other.json", {"x": 1})
    assert json.loads((tmp_path / "other.json").read_text()) == {"x": 1} and not tmp.exists()


def test_a_stamp_is_never_written_through_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "ckpt").symlink_to(victim, target_is_directory=True)
    with pytest.raises(atomic.SymlinkRefused):
        stamp(tmp_path / "ckpt", KIND_CHECKPOINT)
    real = tmp_path / "real"
    real.mkdir()
    (real / OWNER_STAMP).symlink_to(victim / "file")
    with pytest.raises(atomic.SymlinkRefused):
        stamp(real, KIND_OUTPUT)
    assert list(victim.iterdir()) == []
    with pytest.raises(ValueError, match="unknown folder kind"):
        stamp(real, "whatever")


def test_lock_files_are_created_exclusively_and_never_through_a_link(tmp_path):
    from airo.core.lock import FolderLocked, folder_lock, lock_path

    victim = tmp_path / "victim"
    victim.write_text("precious")
    folder = tmp_path / "work"
    lock_path(folder).symlink_to(victim)
    with pytest.raises(atomic.SymlinkRefused, match="lock file"):
        with folder_lock(folder):
            pass
    assert victim.read_text() == "precious"
    lock_path(folder).unlink()
    os.mkfifo(lock_path(folder))  # not a regular file: never opened for writing
    with pytest.raises(AiroError, match="not a regular file"):
        with folder_lock(folder):
            pass
    lock_path(folder).unlink()
    lock_path(folder).write_text('{"pid": 1}')  # a regular one left by a killed run: taken over
    with folder_lock(folder):
        assert json.loads(lock_path(folder).read_text())["pid"] == os.getpid()
    _locked(tmp_path, folder / "sub")  # another run on a folder inside
    with pytest.raises(FolderLocked, match="holds .*sub, which another airo run is using"):
        with folder_lock(tmp_path / "work-2" / ".." / "work"):
            pass
    assert not lock_path(folder).exists()  # the refused lock is not left behind


def test_the_lock_is_one_per_folder_however_spelt_and_covers_the_tree(tmp_path, monkeypatch):
    from airo.core.lock import FolderLocked, folder_lock

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    _locked(tmp_path, tmp_path / "A")
    for spelling in ("A", "./A/", "x/../A", str(tmp_path / "A")):
        with pytest.raises(FolderLocked, match="in use by another airo run"):
            with folder_lock(spelling):
                pass
    for inner in ("A/sub", "x/../A/sub/deeper"):
        with pytest.raises(FolderLocked, match="is inside .*A, which another airo run is using"):
            with folder_lock(inner):
                pass
    with folder_lock("B"):  # a free folder next to it
        pass


def test_the_working_dirs_lock_outlives_the_save_into_the_output_that_holds_it(tmp_path):
    """The working dir inside the output dir: its lock file sits in the output dir, and the
    save (file by file) removes only the previous save's files: the lock stays held."""
    import fcntl

    from airo.core.lock import folder_lock, lock_path

    out = tmp_path / "out"
    with atomic.atomic_directory(out) as tmp:
        (tmp / "adapter_model.safetensors").write_text("first")
    work = out / "checkpoints"
    with folder_lock(work, what="working dir"):
        with atomic.atomic_directory(out, keep_existing=True, preserve=(work,)) as tmp:
            (tmp / "adapter_model.safetensors").write_text("second")
        assert lock_path(work).is_file()
        fd = os.open(lock_path(work), os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_replacing_an_owned_folder_removes_only_what_its_stamp_lists(tmp_path):
    out = tmp_path / "out"
    with atomic.atomic_directory(out) as tmp:
        (tmp / "a.bin").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_text("2")
    assert json.loads((out / OWNER_STAMP).read_text())["files"] == ["a.bin", "sub/", "sub/b.bin"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(AiroError, match=r"holds what airo did not write there: notes.txt"):
        with atomic.atomic_directory(out) as tmp:
            (tmp / "a.bin").write_text("new")
    assert (out / "notes.txt").read_text() == "mine" and (out / "a.bin").read_text() == "1"
    # file by file (the working dir inside the output): the user's file stays, airo's go
    work = out / "work"
    work.mkdir()
    (out / "notes.txt").unlink()
    with atomic.atomic_directory(out, keep_existing=True, preserve=(work,)) as tmp:
        (tmp / "c.bin").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == [OWNER_STAMP, "c.bin", "work"]
    # a checkpoint's rotation: listed files go, a user's file stays (and the folder with it)
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_text("w")
    stamp(ckpt, KIND_CHECKPOINT, files=atomic.owned_entries(ckpt))
    (ckpt / "mine.txt").write_text("mine")
    assert atomic.remove_owned(ckpt) == ["mine.txt"]
    assert sorted(p.name for p in ckpt.iterdir()) == [OWNER_STAMP, "mine.txt"]
    (ckpt / "mine.txt").unlink()
    assert atomic.remove_owned(ckpt) == [] and not ckpt.exists()


def test_a_tampered_stamp_removes_nothing_outside_its_folder(tmp_path):
    """A stamp listing ``../x`` or a path through a link removes nothing there."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "via").symlink_to(victim, target_is_directory=True)
    stamp(folder, KIND_CHECKPOINT, files=["../victim/keep.txt", "via/keep.txt", str(victim / "keep.txt"), "via"])
    atomic.remove_owned(folder)
    assert (victim / "keep.txt").read_text() == "precious"


def test_a_rotated_checkpoint_keeps_a_users_file(tmp_path):
    from airo.core.training import CHECKPOINT_MARKER, rotate_checkpoints

    for step in (1, 2):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "adapter_model.safetensors").write_text("w")
        stamp(ckpt, KIND_CHECKPOINT, files=[*atomic.owned_entries(ckpt), CHECKPOINT_MARKER])
        (ckpt / CHECKPOINT_MARKER).write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-1" / "my-eval.txt").write_text("mine")
    assert [p.name for p in rotate_checkpoints(tmp_path, 1)] == ["checkpoint-1"]
    assert sorted(p.name for p in (tmp_path / "checkpoint-1").iterdir()) == [OWNER_STAMP, "my-eval.txt"]
    assert (tmp_path / "checkpoint-2" / "adapter_model.safetensors").is_file()


def test_atomic_directory_refuses_a_link_swapped_in_while_it_wrote(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "elsewhere").mkdir()
    parent = tmp_path / "parent"
    parent.symlink_to(tmp_path / "real", target_is_directory=True)
    with pytest.raises(atomic.SymlinkRefused, match="now leads to"):
        with atomic.atomic_directory(parent / "out") as tmp:
            (tmp / "model.safetensors").write_text("w")
            parent.unlink()
            parent.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert list((tmp_path / "elsewhere").iterdir()) == [] and list((tmp_path / "real").iterdir()) == []


def test_the_docs_layouts_still_work(tmp_path, airo_env):
    """The working dir beside the output (examples/demo.yaml), inside it, or the same
    folder; the default OUTPUT-checkpoints."""
    from airo.core.config import build_config
    from airo.core.training import check_folders

    base = ["--model_name_or_path", "m", "--dataset", str(CONVERSATIONS)]
    for flags in (["--output_dir", tmp_path / "runs/demo-adapter", "--working_dir", tmp_path / "runs/demo-checkpoints"],
                  ["--output_dir", tmp_path / "o1", "--working_dir", tmp_path / "o1" / "checkpoints"],
                  ["--output_dir", tmp_path / "o2", "--working_dir", tmp_path / "o2"],
                  ["--output_dir", tmp_path / "o3"]):
        config = build_config(None, [*base, *map(str, flags)])
        check_folders(config)
        from airo.core.training.folders import claim_run_folders

        claim_run_folders(config)
        check_folders(config)  # and again on the re-run: its own stamps are no obstacle
    inner = json.loads((tmp_path / "o1" / "checkpoints" / OWNER_STAMP).read_text())
    outer = json.loads((tmp_path / "o1" / OWNER_STAMP).read_text())
    assert inner["kind"] == KIND_WORKING_DIR and outer["kind"] == KIND_OUTPUT and outer["files"] == []
    assert inner["run"] == outer["run"]


# -- end to end: real runs -----------------------------------------------------------------------------

def _demo(model: str, root: Path, *extra) -> list[str]:
    return ["train", "--model_name_or_path", model, "--dataset", str(CONVERSATIONS), "--dataset_format",
            "airoboros_chat", "--model_max_len", "128", "--per_device_train_batch_size", "4",
            "--gradient_accumulation_steps", "1", "--lora_r", "4", "--eval_dataset_size", "0", "--report_to",
            "none", "--bits", "16", "--max_steps", "1", "--save_total_limit", "1", *map(str, extra)]


@pytest.mark.slow
def test_merge_and_preprocess_never_replace_a_real_runs_folders(tiny_model_dir, tmp_path, airo_env):
    """After a real run: merge --out at its working dir or a checkpoint, preprocess --output
    at its adapter: refused, nothing changed; a user's file in its output survives the next
    run, which refuses and names it; moved out, the next run saves."""
    root = tmp_path
    code, out, err = run_airo(_demo(tiny_model_dir, root, "--output_dir", root / "out", "--working_dir",
                                    root / "work"))
    assert code == 0, err
    ckpt = next((root / "work").glob("checkpoint-*"))
    assert json.loads((ckpt / OWNER_STAMP).read_text())["files"]  # listed when marked complete
    before = snapshot(root / "out", root / "work")
    for argv, kind in ((["merge", "--base", tiny_model_dir, "--adapter", root / "out", "--out", root / "work"],
                        KIND_WORKING_DIR),
                       (["merge", "--base", tiny_model_dir, "--adapter", root / "out", "--out", ckpt], "is inside"),
                       (["preprocess", "--model_name_or_path", tiny_model_dir, "--dataset", CONVERSATIONS,
                         "--dataset_format", "airoboros_chat", "--output", root / "out"], KIND_OUTPUT)):
        code, _, err = run_airo(list(map(str, argv)))
        assert code == 2 and err.count("\n") == 1, err
        assert KIND_TEXT.get(kind, kind) in err, err
    assert snapshot(root / "out", root / "work") == before
    (root / "out" / "my-notes.md").write_text("mine")
    code, _, err = run_airo(_demo(tiny_model_dir, root, "--output_dir", root / "out", "--working_dir",
                                  root / "work2"))
    assert code == 2 and "my-notes.md" in err and (root / "out" / "my-notes.md").read_text() == "mine", err
    assert not (root / "work2").exists()
    (root / "out" / "my-notes.md").rename(root / "my-notes.md")
    code, _, err = run_airo(_demo(tiny_model_dir, root, "--output_dir", root / "out", "--working_dir",
                                  root / "work2"))
    assert code == 0, err
    stamp_data = json.loads((root / "out" / OWNER_STAMP).read_text())
    assert stamp_data["kind"] == KIND_OUTPUT and "adapter_model.safetensors" in stamp_data["files"]
    assert stamp_data["working_dir"] == str((root / "work2").resolve())


@pytest.mark.slow
def test_a_users_file_in_an_output_that_holds_the_working_dir_survives(tiny_model_dir, tmp_path, airo_env):
    """The layout with the working dir inside the output dir: the save replaces the files
    the previous save listed, file by file; the user's file and the run's lock stay."""
    root = tmp_path
    flags = ("--output_dir", root / "out", "--working_dir", root / "out" / "checkpoints")
    code, _, err = run_airo(_demo(tiny_model_dir, root, *flags))
    assert code == 0, err
    listed = json.loads((root / "out" / OWNER_STAMP).read_text())["files"]
    assert "adapter_model.safetensors" in listed and not any(f.startswith("checkpoints") for f in listed)
    (root / "out" / "checkpoints" / "completed").unlink()  # train again in the same folders
    (root / "out" / "mine.txt").write_text("mine")
    code, _, err = run_airo(_demo(tiny_model_dir, root, *flags))
    assert code == 2 and "mine.txt" in err, err
    assert (root / "out" / "mine.txt").read_text() == "mine"
