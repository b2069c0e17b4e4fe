"""What this platform offers beyond POSIX and trio, found by feature detection.

triosrv runs wherever trio does. Linux adds pieces the tools use when they are there:
CPU affinity (``os.sched_getaffinity``; the benchmarks pin servers and load to CPUs)
and ``/proc`` (fd tables, CPU times). Each caller asks here, or checks the attribute
itself, and falls back or says what is missing -- never by the platform's name, so
that a platform which gains a feature gains its use. This process's own fds can be
listed and described anywhere (:func:`open_fd_numbers`, :func:`fd_target`); another
process's only through /proc.
"""

from __future__ import annotations

import os
import resource
import stat

__all__ = [
    "FD_PROBE_LIMIT",
    "can_pin",
    "cpu_affinity",
    "describe_fd",
    "fd_target",
    "open_fd_numbers",
    "usable_cpu_count",
]


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


# --- this process's fds, with or without /proc ---------------------------------------

# Without a directory that lists fds, every number below this (and below RLIMIT_NOFILE)
# is probed with fstat: about 20 ms, and fds above it are not seen.
FD_PROBE_LIMIT = 1 << 16


def open_fd_numbers() -> list[int]:
    """This process's open fds, sorted: from ``/proc/self/fd`` (Linux), else ``/dev/fd``
    where it really lists them (macOS; FreeBSD with fdescfs), else by probing every
    number below the fd limit (at most :data:`FD_PROBE_LIMIT`) with ``fstat``."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        listed = _listed_fds(directory)
        if listed is not None:
            return listed
    return [fd for fd in range(_probe_bound()) if _is_open(fd)]


def _listed_fds(directory: str) -> list[int] | None:
    # A directory that does not list an fd opened just now is not this process's fd
    # table (FreeBSD's /dev/fd without fdescfs shows 0, 1 and 2 only).
    marker = os.open(os.devnull, os.O_RDONLY)
    try:
        try:
            names = os.listdir(directory)
        except OSError:
            return None
        numbers = {int(name) for name in names if name.isascii() and name.isdigit()}
        if marker not in numbers:
            return None
        numbers.discard(marker)
    finally:
        os.close(marker)
    return sorted(fd for fd in numbers if _is_open(fd))  # listdir's own fd is gone


def _probe_bound() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return FD_PROBE_LIMIT if soft == resource.RLIM_INFINITY else min(soft, FD_PROBE_LIMIT)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def fd_target(fd: int) -> str | None:
    """What an fd of this process points at, or None if it is closed.

    ``/proc/self/fd``'s link where there is one (``socket:[81234]``, a path, ...), else a
    description from ``fstat`` in the same shape: ``socket:[INODE]``, ``pipe:[INODE]``,
    ``dir:[DEV:INODE]``, ``file:[DEV:INODE]``, a terminal's path, ``device:[RDEV]``. The
    inode tells one socket or file from another where the platform numbers them.
    """
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass  # closed, or no /proc: fstat says which
    described = describe_fd(fd)
    return None if described is None else described[1]


def describe_fd(fd: int) -> tuple[str, str] | None:
    """``(kind, target)`` of an fd of this process from ``fstat`` alone, None if closed.

    ``kind`` is socket, pipe, dir, tty, device or file; ``target`` as in :func:`fd_target`.
    """
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    mode = st.st_mode
    if stat.S_ISSOCK(mode):
        return "socket", f"socket:[{st.st_ino}]"
    if stat.S_ISFIFO(mode):
        return "pipe", f"pipe:[{st.st_ino}]"
    if stat.S_ISDIR(mode):
        return "dir", f"dir:[{st.st_dev}:{st.st_ino}]"
    if stat.S_ISCHR(mode):
        try:
            return "tty", os.ttyname(fd)
        except OSError:
            return "device", f"device:[{st.st_rdev}]"
    return "file", f"file:[{st.st_dev}:{st.st_ino}]"
