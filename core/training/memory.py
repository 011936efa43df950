"""Memory a training run hands back between its stages, so that it does not count in the
peak of every step after them."""

from __future__ import annotations


def release_build_memory() -> None:
    """Return to the OS what Arrow's memory pool kept from building the datasets.

    The pool (mimalloc or jemalloc) keeps freed buffers for the next allocation, but once the
    datasets are written the run reads them memory-mapped and allocates nothing from it again
    (about 20 MiB held at the issue's 5,000 conversations, more for larger data).
    """
    try:
        import pyarrow
    except ImportError:  # pragma: no cover - datasets requires pyarrow
        return
    pyarrow.default_memory_pool().release_unused()
