"""Trust: airo never touches a user's files, never resumes onto the wrong run, and every
state file it relies on is durable and read fail-closed (docs/reliability.md lists each
guarantee with the test here that proves it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES, run_cli

CONVERSATIONS = EXAMPLES / "data" / "conversations.json"


def _config(*argv):
    from airo.core.config import build_config

    return build_config(None, list(map(str, argv)))


def _user_folder(path: Path, dataset: Path | None = None) -> dict[str, str]:
    """A folder that looks like a model to a naive check, holding a user's work."""
    path.mkdir(parents=True, exist_ok=True)
    files = {"config.json": "{}", "thesis.tex": "years of work", "README.md": "my notes",
             "tokenizer_config.json": '{"mine": true}'}
    for name, text in files.items():
        (path / name).write_text(text)
    return files


def _unchanged(path: Path, files: dict[str, str]) -> bool:
    return all((path / name).read_text() == text for name, text in files.items()) \
        and sorted(p.name for p in path.iterdir() if p.name in files) == sorted(files)


def _demo_flags(model: str, root: Path, *extra) -> list[str]:
    return ["--model_name_or_path", model, "--dataset", str(CONVERSATIONS), "--dataset_format", "airoboros_chat",
            "--model_max_len", "128", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
            "--lora_r", "4", "--eval_dataset_size", "0", "--logging_steps", "1", "--report_to", "none",
            "--bits", "16", *map(str, extra)]


# -- data loss: end to end, through the CLI -------------------------------------------------------

@pytest.mark.parametrize("option", ["--output_dir", "--merged_output_dir"])
def test_a_users_folder_is_never_an_output(option, tiny_model_dir, tmp_path, airo_env):
    mine = tmp_path / "mine"
    files = _user_folder(mine)
    data = mine / "train.json"
    data.write_text(CONVERSATIONS.read_text())
    outputs = {"--output_dir": tmp_path / "out", "--merged_output_dir": tmp_path / "merged", option: mine}
    flags = _demo_flags(tiny_model_dir, tmp_path, "--max_steps", "1", "--output_dir", outputs["--output_dir"],
                        "--merged_output_dir", outputs["--merged_output_dir"])
    flags[flags.index("--dataset") + 1] = str(tmp_path / "data.json")
    (tmp_path / "data.json").write_text(CONVERSATIONS.read_text())
    started = time.time()
    result = run_cli("train", *flags, "--working_dir", tmp_path / "work")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "airo did not write" in result.stderr and str(mine) in result.stderr
    assert time.time() - started < 60  # before any model loads
    assert _unchanged(mine, files) and data.is_file()
    assert not (tmp_path / "work").exists()


def test_merge_never_replaces_a_users_folder(tiny_model_dir, tmp_path):
    mine = tmp_path / "mine"
    files = _user_folder(mine)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    result = run_cli("merge", "--base", tiny_model_dir, "--adapter", adapter, "--out", mine)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert _unchanged(mine, files)


def test_a_symlinked_output_dir_is_refused(tiny_model_dir, tmp_path, airo_env):
    target = tmp_path / "elsewhere"
    files = _user_folder(target)
    link = tmp_path / "out"
    link.symlink_to(target, target_is_directory=True)
    result = run_cli("train", *_demo_flags(tiny_model_dir, tmp_path, "--max_steps", "1", "--output_dir", link,
                                           "--working_dir", tmp_path / "work"))
    assert result.returncode != 0 and "symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert _unchanged(target, files) and link.is_symlink()


def test_working_dir_inside_a_users_output_folder_is_refused(tiny_model_dir, tmp_path, airo_env):
    mine = tmp_path / "mine"
    files = _user_folder(mine)
    result = run_cli("train", *_demo_flags(tiny_model_dir, tmp_path, "--max_steps", "1", "--output_dir", mine,
                                           "--working_dir", mine / "checkpoints"))
    assert result.returncode != 0 and "airo did not write" in result.stderr
    assert _unchanged(mine, files) and not (mine / "checkpoints").exists()


def test_outputs_never_hold_an_input_or_the_current_directory(tiny_model_dir, tmp_path, airo_env):
    from airo.core.atomic import stamp
    from airo.core.errors import ConfigError
    from airo.core.training import run_training

    out = tmp_path / "out"
    out.mkdir()
    stamp(out, "output")  # an earlier airo output the user then put the data into
    data = out / "data.json"
    data.write_text(CONVERSATIONS.read_text())
    flags = _demo_flags(tiny_model_dir, tmp_path, "--output_dir", out)
    flags[flags.index("--dataset") + 1] = str(data)
    with pytest.raises(ConfigError, match=r"--dataset .*data.json\) is inside --output_dir"):
        run_training(_config(*flags))
    data.unlink()
    cwd = out / "sub"
    cwd.mkdir()
    result = run_cli("train", *_demo_flags(tiny_model_dir, tmp_path, "--output_dir", out), cwd=cwd)
    assert result.returncode != 0 and "the current directory" in result.stderr
    assert cwd.is_dir()


def test_a_foreign_checkpoint_next_to_airos_is_never_deleted(tmp_path):
    from airo.core.atomic import stamp
    from airo.core.errors import ConfigError
    from airo.core.training import CHECKPOINT_MARKER, find_resume_checkpoint

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        stamp(tmp_path / f"checkpoint-{step}", "checkpoint")
    (tmp_path / "checkpoint-2" / CHECKPOINT_MARKER).write_text(json.dumps({"global_step": 2}))
    foreign = tmp_path / "checkpoint-999"
    foreign.mkdir()
    (foreign / "model.safetensors").write_text("someone else's")
    with pytest.raises(ConfigError, match="checkpoint-999.*did not write.*move them out"):
        find_resume_checkpoint(tmp_path)
    assert (foreign / "model.safetensors").is_file()
    # the advice works: moved out, airo resumes from its own and removes only its own half-written one
    foreign.rename(tmp_path.parent / f"{tmp_path.name}-moved")
    best, incomplete = find_resume_checkpoint(tmp_path)
    assert best.name == "checkpoint-2" and [p.name for p in incomplete] == ["checkpoint-4"]


# -- locks -------------------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from airo.core.lock import folder_lock
with folder_lock(sys.argv[1], what="working dir"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_lock_names_its_holder_and_is_taken_over_when_it_dies(tmp_path):
    from airo.core.lock import FolderLocked, folder_lock, lock_path

    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(work)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLocked, match=rf"working dir {work} is in use by another airo run \(pid {holder.pid}, on "):
            with folder_lock(work, what="working dir"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(work).exists()  # left behind by the killed holder ...
    with folder_lock(work):  # ... and taken over: the kernel released the dead process's lock
        with folder_lock(work):  # re-entrant within a process
            pass
    assert not lock_path(work).exists()


@pytest.mark.slow
def test_two_runs_on_one_working_dir(tiny_model_dir, tmp_path, airo_env):
    """The second `airo train` on a working dir in use fails at once, naming the first."""
    from airo.core.lock import lock_path

    flags = _demo_flags(tiny_model_dir, tmp_path, "--num_train_epochs", "50", "--save_strategy", "no",
                        "--output_dir", tmp_path / "out")
    env = dict(os.environ, AIRO_CACHE=str(tmp_path / "cache"))
    first = subprocess.Popen([sys.executable, "-m", "airo.core", "train", *flags], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not lock_path(tmp_path / "out-checkpoints").exists():
            assert first.poll() is None and time.time() < deadline, first.stdout.read()
            time.sleep(0.2)
        started = time.time()
        second = run_cli("train", *flags, env={"AIRO_CACHE": str(tmp_path / "cache")})
        assert second.returncode != 0 and time.time() - started < 30
        assert f"is in use by another airo run (pid {first.pid}" in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


# -- resume: the data, the planned end, fail-closed state --------------------------------------

def _train(model, root: Path, data: Path, *extra):
    from airo.core.training import run_training

    flags = _demo_flags(model, root, "--output_dir", root / "out", *extra)
    flags[flags.index("--dataset") + 1] = str(data)
    return run_training(_config(*flags))


@pytest.mark.slow
def test_resume_refuses_changed_data(tiny_model_dir, tmp_path, airo_env):
    from airo.core.errors import ConfigError
    from airo.core.training import COMPLETED_FILE

    data = tmp_path / "data.json"
    records = json.loads(CONVERSATIONS.read_text())
    data.write_text(json.dumps(records))
    first = _train(tiny_model_dir, tmp_path, data, "--max_steps", "2", "--save_steps", "1")
    assert first.global_step == 2
    work = tmp_path / "out-checkpoints"
    (work / COMPLETED_FILE).unlink()  # as if killed before the run finished

    data.write_text(json.dumps(records[:20]))  # 60 -> 20 records
    with pytest.raises(ConfigError, match=r"other data than this command's: the dataset's content \(sha256"):
        _train(tiny_model_dir, tmp_path, data, "--max_steps", "2", "--save_steps", "1")

    # one record edited in place, same size, same mtime: still another dataset
    text = json.dumps(records)
    edited = text.replace(" the ", " tha ", 1)
    assert edited != text and len(edited) == len(text)
    data.write_text(edited)
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ConfigError, match="the dataset's content"):
        _train(tiny_model_dir, tmp_path, data, "--max_steps", "2", "--save_steps", "1")
    data.write_text(text)  # the same data again: resumes (and has nothing left to train)
    again = _train(tiny_model_dir, tmp_path, data, "--max_steps", "2", "--save_steps", "1")
    assert again.resumed_from and again.global_step == 2


@pytest.mark.slow
def test_a_run_at_its_planned_end_trains_nothing_more(tiny_model_dir, tmp_path, airo_env, capsys):
    """--max_steps 3, killed while the final outputs were written: the re-run trains no 4th step."""
    import shutil

    from airo.core.training import COMPLETED_FILE, read_completed

    flags = ("--max_steps", "3", "--save_steps", "100")  # only the final step is checkpointed
    first = _train(tiny_model_dir, tmp_path, CONVERSATIONS, *flags)
    assert first.global_step == 3
    work = tmp_path / "out-checkpoints"
    assert [p.name for p in work.glob("checkpoint-*")] == ["checkpoint-3"]
    (work / COMPLETED_FILE).unlink()  # killed while the outputs were being written
    shutil.rmtree(tmp_path / "out")
    capsys.readouterr()
    again = _train(tiny_model_dir, tmp_path, CONVERSATIONS, *flags)
    out = capsys.readouterr().out
    assert again.global_step == 3 and "nothing left to train" in out
    assert read_completed(work)["global_step"] == 3
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_an_unreadable_completed_marker_is_not_a_finished_run(tmp_path, capsys):
    from airo.core.atomic import stamp
    from airo.core.training import COMPLETED_FILE, run_training

    work = tmp_path / "work"
    work.mkdir()
    stamp(work, "working dir")
    for garbage in ("", "not json", "[]", '{"global_step": "many"}'):
        (work / COMPLETED_FILE).write_text(garbage)
        config = _config("--model_name_or_path", tmp_path / "no-such-model", "--output_dir", tmp_path / "out",
                         "--working_dir", work, "--dataset", CONVERSATIONS, "--dataset_format", "airoboros_chat")
        with pytest.raises(Exception) as caught:  # it goes on to load the (missing) model: not "complete"
            run_training(config)
        assert "already complete" not in str(caught.value)
        assert "not a readable record of a finished run" in capsys.readouterr().out


def test_explicit_resume_checks_the_checkpoint(tmp_path):
    from airo.core.atomic import stamp
    from airo.core.errors import ConfigError
    from airo.core.training import CHECKPOINT_MARKER, run_training

    work = tmp_path / "work"
    work.mkdir()
    stamp(work, "working dir")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4}))

    def config():
        return _config("--model_name_or_path", tmp_path / "no-such-model", "--output_dir", tmp_path / "out",
                       "--working_dir", work, "--dataset", CONVERSATIONS, "--resume_from_checkpoint", ckpt)

    with pytest.raises(ConfigError, match="lacks optimizer.pt, scheduler.pt, rng_state"):
        run_training(config())
    with pytest.raises(ConfigError, match="no such checkpoint folder"):
        run_training(_config("--model_name_or_path", "m", "--output_dir", tmp_path / "out", "--working_dir", work,
                             "--dataset", CONVERSATIONS, "--resume_from_checkpoint", tmp_path / "missing"))
    # a DeepSpeed checkpoint airo did not mark: DeepSpeed would unpickle it
    (ckpt / "adapter_model.safetensors").unlink()
    (ckpt / "global_step4").mkdir()
    (ckpt / "latest").write_text("global_step4")
    (ckpt / "rng_state_0.pth").write_bytes(b"rng")
    with pytest.raises(ConfigError, match="DeepSpeed checkpoint airo did not mark.*pickle"):
        run_training(config())
    from airo.core.training.checkpoints import check_explicit_resume

    (ckpt / CHECKPOINT_MARKER).write_text(json.dumps({"global_step": 4}))
    assert check_explicit_resume(ckpt) == []  # one airo marked is accepted


def test_data_changes_are_named():
    from airo.core.training.checkpoints import data_changes

    recorded = {"content_hash": "a" * 64, "train_examples": 60, "eval_examples": 2}
    assert data_changes(recorded, content_hash="a" * 64, train_examples=60, eval_examples=2) == []
    changes = data_changes(recorded, content_hash="b" * 64, train_examples=20, eval_examples=2)
    assert changes == ["the dataset's content (sha256 aaaaaaaaaaaa… -> bbbbbbbbbbbb…)",
                       "the number of training examples (60 -> 20)"]
    assert data_changes(None, content_hash="b" * 64) == []  # a checkpoint from before data was recorded
    # the processes share out the batches (and packed rows): resuming with another count lands elsewhere
    assert data_changes({**recorded, "processes": 2}, processes=2) == []
    assert data_changes({**recorded, "processes": 2}, processes=1) == ["the number of processes sharing the batches (2 -> 1)"]
    assert data_changes(recorded, processes=4) == []  # recorded before the count was


# -- durability ------------------------------------------------------------------------------------

def test_markers_and_outputs_are_fsynced_before_they_count(tmp_path, monkeypatch):
    from airo.core import atomic

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic.write_json(tmp_path / "marker.json", {"global_step": 1})
    assert events[0] == ("fsync", str(tmp_path / f".marker.json.airo-tmp-{os.getpid()}"))
    assert events[1] == ("replace", str(tmp_path / "marker.json"))
    assert events[2] == ("fsync", str(tmp_path))  # the rename itself is durable
    events.clear()
    with atomic.atomic_directory(tmp_path / "out") as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(b"w" * 100)
    swap = events.index(("replace", str(tmp_path / "out")))
    synced = {Path(p).name for kind, p in events[:swap] if kind == "fsync"}
    assert {"adapter_model.safetensors", ".airo-owned"} <= synced
    assert ("fsync", str(tmp_path)) in events[swap:]


# -- probes: fail before the model loads ------------------------------------------------------------

def test_unwritable_and_full_output_folders_fail_before_training(tmp_path):
    from airo.core.errors import ConfigError
    from airo.core.training.folders import check_space, probe_writable
    from airo.core.training import run_training

    unwritable = Path("/proc/airo-test/out")  # nobody, root included, creates files there
    with pytest.raises(ConfigError, match="cannot be written"):
        probe_writable(unwritable, "output dir")
    with pytest.raises(ConfigError, match=r"the merged output dir /proc/airo-test/out cannot be written"):
        run_training(_config("--model_name_or_path", "m", "--dataset", CONVERSATIONS, "--output_dir", tmp_path / "o",
                             "--merged_output_dir", unwritable))
    with pytest.raises(ConfigError, match=r"not enough disk space for the output dir .* need at least"):
        check_space([("output dir", str(tmp_path / "o"), 1 << 62)])
    check_space([("output dir", str(tmp_path / "o"), 1)])


# -- found in review: each a regression test -------------------------------------------------------

def test_the_run_lock_and_the_save_agree_however_the_folder_is_spelt(tmp_path, monkeypatch):
    """The run locks --output_dir ../out; the save action's atomic write locks the resolved
    path: one lock, not a run locked out by itself (also through a symlinked parent)."""
    from airo.core.atomic import atomic_directory
    from airo.core.lock import folder_locks

    (tmp_path / "sub").mkdir()
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    monkeypatch.chdir(tmp_path / "sub")
    for spelling, resolved in (("../out", tmp_path / "out"), (str(tmp_path / "link" / "out"), tmp_path / "real" / "out")):
        with folder_locks([("output dir", spelling)]):
            with atomic_directory(resolved) as tmp:
                (tmp / "adapter_model.safetensors").write_text("w")
        assert (resolved / "adapter_model.safetensors").is_file()


def test_a_failed_swap_puts_the_previous_output_back(tmp_path, monkeypatch):
    from airo.core import atomic

    with atomic.atomic_directory(tmp_path / "out") as tmp:
        (tmp / "model.safetensors").write_text("previous")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".out.airo-tmp-"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        with atomic.atomic_directory(tmp_path / "out") as tmp:
            (tmp / "model.safetensors").write_text("new")
    assert (tmp_path / "out" / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_saving_into_an_output_that_holds_the_working_dir_leaves_no_stale_files(tmp_path):
    from airo.core.atomic import atomic_directory

    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "model-00001-of-00002.safetensors").write_text("old shard")
        (tmp / "model.safetensors.index.json").write_text("{}")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "checkpoint-3").mkdir()
    with atomic_directory(out, keep_existing=True, preserve=(out / "checkpoints",)) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [".airo-owned", "checkpoints", "model.safetensors"]
    assert (out / "checkpoints" / "checkpoint-3").is_dir()


def test_outputs_inside_a_saved_dataset_folder_are_refused(tmp_path):
    from airo.core.errors import ConfigError
    from airo.core.training import check_folders

    data = tmp_path / "saved"
    data.mkdir()
    (data / "dataset_dict.json").write_text("{}")
    config = _config("--model_name_or_path", "m", "--dataset", data, "--output_dir", tmp_path / "out",
                     "--working_dir", data / "work")
    with pytest.raises(ConfigError, match="--working_dir .* is inside --dataset"):
        check_folders(config)


def test_another_run_writing_the_same_cache_entry_costs_a_private_copy(tmp_path, tiny_tokenizer, monkeypatch,
                                                                         airo_env):
    from airo.core import atomic
    from airo.core.data import pipeline
    from airo.core.lock import FolderLocked

    def busy(*args, **kwargs):
        raise FolderLocked("the dataset cache folder is in use by another airo run (pid 1)")

    monkeypatch.setattr(atomic, "atomic_directory", busy)
    config = _config("--model_name_or_path", "m", "--output_dir", tmp_path / "o", "--dataset", CONVERSATIONS,
                     "--dataset_format", "airoboros_chat", "--model_max_len", "128")
    with pytest.warns(UserWarning, match="could not cache the tokenized dataset.*in use by another airo run"):
        prepared = pipeline.prepare_datasets(config, tiny_tokenizer)
    assert len(prepared.train) > 0
