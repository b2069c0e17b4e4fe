"""What this platform offers beyond POSIX and trio, found by feature detection.

triosrv runs wherever trio does. Linux adds pieces the tools use when they are there:
CPU affinity (``os.sched_getaffinity``; the benchmarks pin servers and load to CPUs)
and ``/proc`` (fd tables, CPU times). Each caller asks here, or checks the attribute
itself, and falls back or says what is missing -- never by the platform's name, so
that a platform which gains a feature gains its use.
"""

from __future__ import annotations

import os

__all__ = ["can_pin", "cpu_affinity", "usable_cpu_count"]


def cpu_affinity() -> set[int] | None:
    """The CPUs this process may run on, or None where the platform cannot say
    (no ``sched_getaffinity``: macOS, most BSDs)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return None if getaffinity is None else set(getaffinity(0))


def can_pin() -> bool:
    """Whether a process can be pinned to CPUs here (``sched_setaffinity``)."""
    return hasattr(os, "sched_setaffinity")


def usable_cpu_count() -> int:
    """The CPUs this process may run on: its affinity set, else all of them."""
    cpus = cpu_affinity()
    return len(cpus) if cpus else os.cpu_count() or 1
