"""What a person sees while airo runs: airo's own lines, from rank 0, and little else.

By default the libraries' warnings (transformers, peft, bitsandbytes, DeepSpeed...) are
counted, not shown, and every rank but 0 stays silent; their progress bars show only on a
terminal, on rank 0. ``--verbose`` (or ``AIRO_VERBOSE=1``) shows everything, on every rank.
airo's own warnings are always shown: they are about the user's run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path

import click

# The libraries airo builds on: their warnings are about their internals or deprecations the
# user cannot act on. Warnings from anywhere else (airo, a plugin, the user's code) are shown.
LIBRARIES = ("transformers", "peft", "accelerate", "deepspeed", "bitsandbytes", "torch", "datasets",
             "huggingface_hub", "tokenizers", "safetensors", "wandb", "trl", "pydantic", "tensorboard")
_state = {"verbose": True, "rank": 0, "hidden": 0}


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def from_library(filename: str | None) -> bool:
    """Whether a warning was raised inside one of :data:`LIBRARIES`."""
    parts = Path(filename or "").parts
    for i, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages") and parts[i + 1] in LIBRARIES:
            return True
    return False


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: one yellow line; a library's warning, or any
    warning on a rank other than 0, only with --verbose (counted otherwise)."""
    if not _state["verbose"] and (_state["rank"] != 0 or from_library(filename)):
        _state["hidden"] += 1
        return
    click.secho(f"warning: {message}", fg="yellow", err=True)


def hidden_warnings() -> int:
    return _state["hidden"]


def wants_verbose(args) -> bool:
    """--verbose / --verbose true among a command's raw arguments, or AIRO_VERBOSE=1."""
    if os.environ.get("AIRO_VERBOSE", "").lower() in ("1", "true", "yes"):
        return True
    args = list(args)
    for i, arg in enumerate(args):
        if arg in ("--verbose", "--verbose=true", "--verbose=True"):
            following = args[i + 1].lower() if i + 1 < len(args) else ""
            return following not in ("false", "0", "no")
    return False


def configure_output(*, verbose: bool) -> None:
    """Quiet the libraries for a training command (before they are imported where possible)."""
    _state["verbose"], _state["rank"] = verbose, _rank()
    if verbose:
        return
    quiet_rank = _state["rank"] != 0
    on_terminal = sys.stderr.isatty()
    if quiet_rank or not on_terminal:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "peft", "accelerate", "DeepSpeed", "torch.distributed", "bitsandbytes", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR if quiet_rank else logging.WARNING)
    # read by transformers when it is imported (later: nothing here imports torch or transformers)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error" if quiet_rank else "warning")
    if "DS_ACCELERATOR" not in os.environ and _no_accelerator():
        os.environ["DS_ACCELERATOR"] = "cpu"  # DeepSpeed warns on every rank when it has to guess
    if os.environ.get("WANDB_MODE") == "offline" and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        # transformers prints "[INFO] Running in WANDB offline mode" when this module is imported, on every rank
        sys.meta_path.insert(0, _QuietImport("transformers.integrations.integration_utils"))


class _QuietImport:
    """Imports one module with its stdout swallowed (a library that prints on import)."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        import importlib.util

        sys.meta_path.remove(self)  # once; also lets find_spec below find the real spec
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            with contextlib.redirect_stdout(io.StringIO()):
                run(module)

        spec.loader.exec_module = exec_module
        return spec


def _no_accelerator() -> bool:
    """No GPU device on this Linux machine, told without importing torch (the commands'
    checks must stay fast and torch-free): no NVIDIA device node, no ROCm one."""
    import glob
    import platform

    if platform.system() != "Linux":
        return False  # macOS (MPS) and others: DeepSpeed's own detection
    return not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/kfd") and not glob.glob("/dev/accel*")
