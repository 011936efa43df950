"""Install airo into the running Python with the torch build this machine can use.

    python install.py            airo (editable) + torch
    python install.py --test     ... + the test tools (pytest, hypothesis, pytest-xdist)

PyPI's torch for Linux is a CUDA build of several GB; on a machine without an NVIDIA GPU
that is wasted, so this script picks the build first and then installs airo with pip:

- torch already importable: kept as it is (its build is printed);
- an NVIDIA GPU (``nvidia-smi -L`` lists one): PyPI's default torch, a CUDA build;
- macOS: PyPI's default torch (CPU and Apple's GPU);
- otherwise: the CPU build from PyTorch's CPU wheel index.

``--torch cpu|cuda|keep`` overrides the choice; ``AIRO_TORCH_INDEX_URL`` replaces the CPU
wheel index (a mirror); ``--dry-run`` prints the pip commands instead of running them.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
ROOT = Path(__file__).resolve().parent


def has_nvidia_gpu() -> bool:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return False
    try:
        listed = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def installed_torch() -> str | None:
    """The installed torch's version and build, or None when there is none."""
    if importlib.util.find_spec("torch") is None:
        return None
    probe = subprocess.run([sys.executable, "-c",
                            "import torch; print(torch.__version__, torch.version.cuda or 'cpu')"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    version, build = probe.stdout.split()
    return f"{version} ({'CPU' if build == 'cpu' else 'CUDA ' + build} build)"


def torch_choice(requested: str, *, installed: str | None, system: str, gpu: bool) -> str:
    """keep (the installed one), cuda (PyPI's, with a GPU), default (PyPI's, macOS) or cpu."""
    if requested != "auto":
        return requested
    if installed is not None:
        return "keep"
    if gpu or system == "Darwin":
        return "cuda" if gpu else "default"
    return "cpu"


def pip_commands(choice: str, *, test: bool, cpu_index: str) -> list[list[str]]:
    pip = [sys.executable, "-m", "pip", "install"]
    commands = []
    if choice == "cpu":
        commands.append(pip + ["torch", "--index-url", cpu_index])
    elif choice in ("cuda", "default"):
        commands.append(pip + ["torch"])
    commands.append(pip + ["-e", f"{ROOT}[test]" if test else str(ROOT)])
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test", action="store_true", help="also install the test tools")
    parser.add_argument("--torch", choices=["auto", "cpu", "cuda", "keep"], default="auto",
                        help="which torch build (default: auto, as described above)")
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands, run nothing")
    args = parser.parse_args(argv)

    installed = installed_torch()
    choice = torch_choice(args.torch, installed=installed, system=platform.system(), gpu=has_nvidia_gpu())
    reason = {
        "keep": f"keeping the installed torch {installed}" if installed else "torch: left to pip (--torch keep)",
        "cuda": "an NVIDIA GPU is present: PyPI's torch (a CUDA build)",
        "default": "macOS: PyPI's torch",
        "cpu": "no NVIDIA GPU found: the CPU build of torch (--torch cuda installs the CUDA one)",
    }[choice]
    print(f"install.py: {reason}", flush=True)
    for command in pip_commands(choice, test=args.test,
                                cpu_index=os.environ.get("AIRO_TORCH_INDEX_URL", CPU_INDEX_URL)):
        print("install.py: " + " ".join(command), flush=True)
        if not args.dry_run:
            done = subprocess.run(command)
            if done.returncode != 0:
                print(f"install.py: pip failed (exit {done.returncode}); nothing after it was installed",
                      file=sys.stderr)
                return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
