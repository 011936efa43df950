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
