"""This process's memory as Linux reports it in /proc/self/status, shared by the benchmarks."""

from __future__ import annotations


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (``VmHWM``, ``VmRSS``, ``RssAnon``...) in MiB; NaN
    where there is no such file or field (not Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
