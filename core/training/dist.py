"""Who is speaking in a (possibly distributed) run: the rank, the main process's voice, barriers."""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def say(message: str, *, main: bool = True) -> None:
    if main:
        print(f"[airo] {message}", flush=True)


def barrier() -> None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def leave_process_group() -> None:
    """Tear down this process's process group once its run is over. Left to interpreter
    shutdown, a rank that finishes while rank 0 is still saving can die with SIGABRT
    ("terminate called without an active exception") as a communication thread is destroyed
    unjoined: a finished run reported as failed. Local to this process, not a collective."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
