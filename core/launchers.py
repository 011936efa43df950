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
    """The process count an `accelerate launch` command line asks for: --num_processes (all
    machines together), at least --num_machines; None where it says neither."""
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


# -- what `airo doctor` tells about the distributed setup ----------------------------------------

def _accelerate_config(env) -> dict | None:
    """accelerate's default config file (``accelerate config`` writes it), or None."""
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                                              "huggingface")
    path = Path(env.get("ACCELERATE_CONFIG_FILE") or os.path.join(home, "accelerate", "default_config.yaml"))
    if not path.is_file():
        return None
    try:
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except Exception as exc:  # noqa: BLE001 - a doctor reports, it does not crash
        return {"path": str(path), "error": f"{type(exc).__name__}: {exc}"}
    return {"path": str(path), "distributed_type": data.get("distributed_type"),
            "num_processes": data.get("num_processes"), "num_machines": data.get("num_machines")}


def distributed_state(env=None, *, gpus: int | None = None) -> dict:
    """The launch this process sees (ranks, rendezvous, Slurm, accelerate's config), what torch
    offers (backends, FSDP2), and the usual mistakes as ``problems``."""
    env = os.environ if env is None else env
    state: dict = {"launcher": None, "world_size": env.get("WORLD_SIZE"), "rank": env.get("RANK"),
                   "local_rank": env.get("LOCAL_RANK"), "master": None, "slurm": None, "accelerate_config": None,
                   "backends": [], "fsdp2": False, "problems": [], "notes": []}
    if "TORCHELASTIC_RUN_ID" in env:
        state["launcher"] = "torchrun"
    elif launched_by_accelerate(env):
        state["launcher"] = "accelerate"
    elif "SLURM_STEP_NUM_TASKS" in env:
        state["launcher"] = "srun"
    if env.get("MASTER_ADDR") or env.get("MASTER_PORT"):
        state["master"] = f"{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}"
    if "SLURM_JOB_ID" in env:
        state["slurm"] = {"job": env["SLURM_JOB_ID"], "nodes": env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES"),
                          "step_tasks": env.get("SLURM_STEP_NUM_TASKS"), "nodelist": env.get("SLURM_JOB_NODELIST")}
    state["accelerate_config"] = _accelerate_config(env)
    try:
        import torch.distributed as dist

        state["backends"] = [name for name, available in (("gloo", dist.is_gloo_available()),
                                                          ("nccl", dist.is_nccl_available()),
                                                          ("mpi", dist.is_mpi_available())) if available]
        try:
            from torch.distributed.fsdp import fully_shard  # noqa: F401

            state["fsdp2"] = True
        except ImportError:
            pass
    except ImportError:
        state["problems"].append("torch.distributed is not available in this torch build")
    if "MASTER_PORT" in env and "WORLD_SIZE" not in env and state["launcher"] != "accelerate":
        state["problems"].append("MASTER_PORT is set but WORLD_SIZE is not: torchrun and accelerate set both; "
                                 "a stale MASTER_PORT can make two jobs meet")
    config = state["accelerate_config"]
    if config is None and not gpus:
        state["notes"].append("no accelerate config and no GPU: `accelerate launch --num_processes N` runs one "
                                 "process here; add --multi_gpu (gloo on the CPU) or use torchrun")
    elif config and config.get("error"):
        state["problems"].append(f"accelerate's config {config['path']} cannot be read: {config['error']}")
    elif config and config.get("distributed_type") == "MULTI_CPU":
        state["problems"].append(f"accelerate's config {config['path']} says MULTI_CPU: accelerate runs one process "
                                 "for it without an MPI setup; use MULTI_GPU (gloo on the CPU) or torchrun")
    slurm = state["slurm"]
    if slurm and (slurm.get("nodes") or "1") != "1" and state["launcher"] is None:
        state["problems"].append(f"Slurm job {slurm['job']} has {slurm['nodes']} nodes but this process was not "
                                 "started by srun or torchrun: it trains alone (see docs/distributed.md)")
    return state


def describe_distributed(state: dict) -> list[str]:
    lines = []
    if state["launcher"]:
        lines.append(f"launched by {state['launcher']}: rank {state['rank']} of {state['world_size']} "
                     f"(local rank {state['local_rank']}), rendezvous {state['master'] or 'not set'}")
    else:
        lines.append("not launched as part of a distributed job (torchrun, accelerate, srun)")
    lines.append(f"torch.distributed backends: {', '.join(state['backends']) or 'none'}; "
                 f"FSDP2 (fully_shard): {'yes' if state['fsdp2'] else 'no'}")
    config = state["accelerate_config"]
    if config and not config.get("error"):
        lines.append(f"accelerate config {config['path']}: {config.get('distributed_type')}, "
                     f"{config.get('num_processes')} process(es), {config.get('num_machines')} machine(s)")
    elif config is None:
        lines.append("accelerate config: none (`accelerate config` writes one)")
    if state["slurm"]:
        s = state["slurm"]
        lines.append(f"Slurm job {s['job']}: {s.get('nodes') or '?'} node(s) {s.get('nodelist') or ''}".rstrip())
    lines += [f"note: {note}" for note in state["notes"]]
    return lines
