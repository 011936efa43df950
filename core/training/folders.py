"""A run's folders, checked before any model loads: apart, airo's to write, writable, big enough.

- Output folders (the working dir and every folder the chosen post-training actions
  declare, e.g. ``--output_dir``, ``--merged_output_dir``) must not be the same or inside
  one another (only the working dir may live inside the output dir),
  and must not contain anything the run reads (the dataset, the base model, the
  tokenizer, the DeepSpeed and YAML config files) nor the current directory: replacing
  the folder would delete them.
- A folder airo replaces must be new, empty or stamped by airo with the kind it writes
  there, hold nothing its stamp does not list, and not lie inside another folder airo
  stamped (:func:`airo.core.atomic.check_replaceable`); symlinks are refused. The working
  dir is a working dir (or the output dir itself), each action's output of the kind it
  declares (``ActionOutput.kind``).
- Every output folder is probed for writability (a file is created and removed where the
  folder will be) and for free space, so a read-only or full disk fails in seconds, not
  after hours of training.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..atomic import (KIND_OUTPUT, KIND_WORKING_DIR, begin_run, check_inputs_outside, check_replaceable,
                      check_separate, claim_folder, inside)
from ..data.io import dataset_paths
from ..errors import ConfigError

GB = 1024 ** 3


def run_inputs(config) -> list[tuple[str, str]]:
    """The local paths a training run reads."""
    inputs: list[tuple[str, str]] = [("--dataset", p) for p in dataset_paths(config.data.dataset)]
    for option, value in (("--model_name_or_path", config.model.model_name_or_path),
                          ("--tokenizer_name_or_path", config.model.tokenizer_name_or_path),
                          ("--deepspeed", config.training.get("deepspeed")),
                          ("the config file", config.config_file)):
        if isinstance(value, str) and value and Path(value).exists():
            inputs.append((option, value))
    return inputs


def output_holds_working_dir(config) -> bool:
    """True when the working dir is the output dir or inside it (then outputs are written file by file)."""
    return bool(config.run.output_dir) and inside(config.working_dir, config.run.output_dir)


def output_name(output) -> str:
    """``--merged_output_dir`` -> ``merged output dir``, for messages."""
    return output.option.lstrip("-").replace("_", " ")


def check_folders(config, outputs=()) -> None:
    """The run's folders before training: the working dir and the folders the chosen actions
    write (``outputs``: their ``ActionOutput``s) are apart from each other and from the
    inputs, and airo's to write."""
    named: list[tuple[str, str]] = [(o.option, o.path) for o in outputs] + [("--working_dir", config.working_dir)]
    base = config.model.model_name_or_path
    folders = list(named)
    if base and Path(base).is_dir():
        folders.append(("--model_name_or_path", base))
    # a saved-dataset folder is hashed whole: outputs inside it would change "the data"
    folders += [("--dataset", p) for p in dataset_paths(config.data.dataset) if Path(p).is_dir()]
    check_separate(folders, allowed=(("--working_dir", "--output_dir"),))
    check_inputs_outside(named, run_inputs(config))
    for target, kwargs in _replace_checks(config, outputs):
        check_replaceable(target, **kwargs)


def _replace_checks(config, outputs=()) -> list[tuple[str, dict]]:
    """(folder, check_replaceable's arguments) for every folder the run writes."""
    holds = output_holds_working_dir(config)
    out = config.run.output_dir
    same = holds and Path(config.working_dir).resolve() == Path(out).resolve()
    checks = [(config.working_dir, {"kind": (KIND_WORKING_DIR, KIND_OUTPUT) if same else KIND_WORKING_DIR,
                                    "what": "working dir", "nest_in": (out,) if holds else ()})]
    for output in outputs:
        kept = (config.working_dir,) if holds and Path(output.path).resolve() == Path(out).resolve() else ()
        checks.append((output.path, {"kind": getattr(output, "kind", None), "what": output_name(output),
                                     "preserve": kept}))
    if holds and not any(Path(o.path).resolve() == Path(out).resolve() for o in outputs):
        checks.append((out, {"kind": KIND_OUTPUT, "what": "output dir", "preserve": (config.working_dir,)}))
    return checks


def claim_run_folders(config) -> None:
    """Create and stamp the working dir (and the output dir first when it holds the working
    dir), checked as :func:`check_folders` checked them; stamps from now on name this run."""
    holds = output_holds_working_dir(config)
    out = config.run.output_dir
    wd = _replace_checks(config)[0][1]  # the working dir's
    if holds:
        claim_folder(out, kind=KIND_OUTPUT, what="output dir", files=(), preserve=(config.working_dir,))
    claim_folder(config.working_dir, kind=KIND_WORKING_DIR, accept=tuple(wd["kind"]) if isinstance(wd["kind"], tuple)
                 else None, what="working dir", nest_in=wd["nest_in"])
    begin_run(config.working_dir)


# -- writable, with room ------------------------------------------------------------------------

def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor)


def probe_writable(folder: str | os.PathLike, what: str) -> Path:
    """ConfigError unless files can be created where ``folder`` is (or will be). Writes and
    removes one empty temp file in the nearest existing folder; creates nothing else."""
    where = _existing_ancestor(Path(folder))
    try:
        fd, probe = tempfile.mkstemp(prefix=".airo-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"the {what} {Path(folder).absolute()} cannot be written: creating a file in {where} "
                          f"failed ({exc.strerror or exc}). Choose a writable folder.") from None
    return where


def weights_bytes(model_path: str | None) -> int:
    """Size of a local model folder's weight files (0 for a Hub name: unknown before download)."""
    if not model_path or not Path(model_path).is_dir():
        return 0
    return sum(p.stat().st_size for p in Path(model_path).iterdir()
               if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf"))


def needed_space(config, outputs=()) -> list[tuple[str, str, int]]:
    """(what, folder, bytes) the run will at least write: what each action declared
    (``ActionOutput.min_bytes``), and room for checkpoints in the working dir. Lower bounds,
    so they never refuse a run that fits."""
    needs = [("working dir", config.working_dir, 64 * 1024 ** 2)]
    needs += [(output_name(o), o.path, o.min_bytes) for o in outputs]
    return needs


def check_space(needs: list[tuple[str, str, int]]) -> None:
    """ConfigError when a filesystem lacks the room the folders on it will need together."""
    by_device: dict[int, list] = {}
    for what, folder, need in needs:
        where = _existing_ancestor(Path(folder))
        by_device.setdefault(os.stat(where).st_dev, []).append((what, folder, need, where))
    for entries in by_device.values():
        total = sum(e[2] for e in entries)
        free = shutil.disk_usage(entries[0][3]).free
        if total > free:
            names = ", ".join(f"{what} {Path(folder).absolute()}" for what, folder, _, _ in entries)
            raise ConfigError(f"not enough disk space for the {names}: they need at least {total / GB:.2f} GB and "
                              f"{free / GB:.2f} GB are free on that disk. Free some space or choose another disk.")


# -- a run that failed before training ---------------------------------------------------------

def outermost_missing(path: Path) -> Path | None:
    path = path.absolute()
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            return missing
        missing = candidate
    return missing


def remove_unused_folders(created) -> None:
    """A run that failed before training leaves no empty folders behind: the folders it created
    (``created``, each the outermost one that did not exist) go again when they hold nothing but
    this run's stamp (a rejects.jsonl, or anything else, stays)."""
    from ..ownership import OWNER_STAMP, current_run, read_stamp

    this_run = current_run()["id"]
    for top in created:
        if not top.is_dir() or top.is_symlink():
            continue
        folders = sorted((p for p in [top, *top.rglob("*")] if p.is_dir() and not p.is_symlink()),
                         key=lambda p: len(p.parts), reverse=True)
        for folder in folders:
            entries = list(folder.iterdir())
            if not entries:
                folder.rmdir()
            elif [e.name for e in entries] == [OWNER_STAMP] and getattr(read_stamp(folder), "run", None) == this_run:
                entries[0].unlink()
                folder.rmdir()
