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
    """End this process's part in a run that is over. Rank 0 (or a single process) tears its
    process group down and exits normally (wandb's and the other atexit handlers run there).
    Every other rank flushes its output and leaves with ``os._exit(0)``: its files are rank 0's
    to write, and the C++ teardown of the communication threads, whether at interpreter
    shutdown or in ``destroy_process_group`` while rank 0 is still saving or merging, has
    aborted a finished worker with SIGABRT ("terminate called without an active exception")
    often enough to fail finished runs, twice in CI. Not a collective: no rank waits."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1 and dist.get_rank() != 0:
        import logging
        import sys

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)
    dist.destroy_process_group()
