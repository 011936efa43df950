"""What launched this process, checked before a run starts: a launcher that runs fewer processes
than it was asked for must not train quietly in one.

``accelerate launch --num_processes 2`` on a machine without GPUs (no config, or a MULTI_CPU
config) runs its "simple" launcher: one process, with MASTER_ADDR/MASTER_PORT set and no
WORLD_SIZE. The run would train single-process while the user believes it is DDP.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

_FIX = ("on a machine without GPUs accelerate starts several processes only with --multi_gpu "
        "(they then talk over gloo): `accelerate launch --multi_gpu --num_processes N -m airo.core train ...`, "
        "or `torchrun --nproc_per_node N -m airo.core train ...`; with one process meant, pass "
        "--num_processes 1")


def launched_by_accelerate(env=None) -> bool:
    env = os.environ if env is None else env
    return "ACCELERATE_MIXED_PRECISION" in env


def parent_command_line(pid: int | None = None) -> list[str] | None:
    """The parent process's argv (Linux), None where it cannot be read."""
    try:
        raw = Path(f"/proc/{os.getppid() if pid is None else pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _asked_processes(argv: list[str]) -> int | None:
    """The process count an `accelerate launch` command line asks for (--num_processes times
    machines), None where it does not say."""
    def value(*names: str) -> str | None:
        for i, arg in enumerate(argv):
            for name in names:
                if arg == name and i + 1 < len(argv):
                    return argv[i + 1]
                if arg.startswith(name + "="):
                    return arg.split("=", 1)[1]
        return None

    try:
        processes = value("--num_processes", "--num-processes")
        machines = value("--num_machines", "--num-machines")
        asked = int(processes) if processes is not None else None
        if machines is not None and int(machines) > 1:
            return max(asked or 1, int(machines))
        return asked
    except ValueError:
        return None


def check_launcher(env=None, parent_argv: list[str] | None = None) -> None:
    """Stop with a ConfigError when accelerate was asked for several processes and started one."""
    env = os.environ if env is None else env
    if not launched_by_accelerate(env) or "WORLD_SIZE" in env:
        return  # not accelerate's simple launcher: its multi-process launchers set WORLD_SIZE
    argv = parent_command_line() if parent_argv is None else parent_argv
    launch = argv[argv.index("launch") + 1:] if argv and "launch" in argv else argv
    asked = _asked_processes(launch) if launch else None
    if asked is not None and asked > 1:
        raise ConfigError(f"accelerate launch was asked for {asked} processes but started 1: {_FIX}")
    if asked is None and "MASTER_PORT" in env:
        # accelerate sets MASTER_PORT for a single process only when its config asked for several
        raise ConfigError("accelerate launch started 1 process although its config asks for several "
                          f"(MASTER_PORT is set, WORLD_SIZE is not): {_FIX}")


# -- Slurm: `srun` started one task per process, without torchrun --------------------------------

def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list (``node[01-03,07],gpu5``) as host names, in order."""
    hosts: list[str] = []
    depth, start = 0, 0
    parts = []
    for i, char in enumerate(nodelist):  # split on commas outside brackets
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(nodelist[start:i])
            start = i + 1
    parts.append(nodelist[start:])
    for part in filter(None, (p.strip() for p in parts)):
        if "[" not in part:
            hosts.append(part)
            continue
        prefix, rest = part.split("[", 1)
        ranges, suffix = rest.split("]", 1)
        for item in ranges.split(","):
            low, _, high = item.partition("-")
            if not high:
                hosts.append(f"{prefix}{low}{suffix}")
                continue
            width = len(low) if low.startswith("0") else 0
            for n in range(int(low), int(high) + 1):
                hosts.append(f"{prefix}{str(n).zfill(width)}{suffix}")
    return hosts


def slurm_environment(env=None) -> dict[str, str]:
    """torch.distributed's variables for a process that ``srun`` started as one of several tasks
    (``srun --ntasks-per-node N python -m airo.core train ...``, no torchrun): RANK from
    SLURM_PROCID, LOCAL_RANK from SLURM_LOCALID, WORLD_SIZE from SLURM_STEP_NUM_TASKS,
    MASTER_ADDR the step's first host, MASTER_PORT from the job id (one port per job on a shared
    node). Only srun's step variables count: the batch script itself also sees SLURM_NTASKS,
    but runs one process, which must not wait for the others. Empty where a launcher already
    set RANK or WORLD_SIZE (torchrun inside the job: its values win) or for a one-task step."""
    env = os.environ if env is None else env
    if "RANK" in env or "WORLD_SIZE" in env or "SLURM_PROCID" not in env:
        return {}
    try:
        tasks = int(env.get("SLURM_STEP_NUM_TASKS") or 1)
    except ValueError:
        return {}
    if tasks <= 1:
        return {}
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not env.get("MASTER_ADDR") and not nodelist:
        raise ConfigError("a Slurm step of several tasks without SLURM_STEP_NODELIST: cannot tell the "
                          "first host; set MASTER_ADDR, or run torchrun inside the job")
    job = env.get("SLURM_JOB_ID", "")
    port = env.get("MASTER_PORT") or (str(20000 + int(job) % 20000) if job.isdigit() else "29500")
    return {"RANK": env["SLURM_PROCID"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "WORLD_SIZE": str(tasks),
            "MASTER_ADDR": env.get("MASTER_ADDR") or expand_nodelist(nodelist)[0], "MASTER_PORT": port}


def apply_slurm_environment() -> dict[str, str]:
    mapped = slurm_environment()
    os.environ.update(mapped)
    return mapped
