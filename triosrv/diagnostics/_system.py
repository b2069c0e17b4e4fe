"""``triosrv diag system``: the facts about this machine that limit a server.

Each fact carries a one-line hint when its value limits a server (too few fds for
``max_connections``, a short accept backlog, a closed standard fd, ...). Facts that
cannot be read on this platform are reported as ``None`` with a hint saying so,
never guessed.
"""

from __future__ import annotations

import errno
import os
import platform
import resource
import select
import sys

import attrs
import trio

from .._backends import available_backends, missing_feature
from .._config import BACKENDS
from .._platform import cpu_affinity, fd_target
from ._table import render_table

# fds the server needs besides its connections: stdio, the listener, trio's wake-up
# pipe and epoll fd, the EMFILE reserve fd, the control socket, a few spare.
FIXED_FDS = 16
# Below this, a burst of connections overflows the accept queue (SYN retries, 1 s+).
SMALL_BACKLOG = 1024
# Below this many ephemeral ports, a load generator or proxy on this host runs out.
FEW_EPHEMERAL_PORTS = 10000
# select() refuses fds at or above FD_SETSIZE; no fd number is above this bound.
_FD_NUMBER_BOUND = 1 << 20


@attrs.frozen(kw_only=True)
class SystemFact:
    """One fact: a stable ``name``, a JSON-able ``value``, and a ``hint`` or None."""

    name: str
    value: object
    hint: str | None = None


def _read_proc(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as file:
            return file.read().strip()
    except FileNotFoundError:
        return None


def io_manager_name() -> str:
    """The I/O manager trio uses on this platform (``epoll`` on Linux)."""
    # trio does not expose this publicly; TheIOManager is the class it instantiates
    # for every run. Fall back to trio's documented choice if the name ever moves.
    cls: type | None = getattr(trio._core._run, "TheIOManager", None)
    if cls is not None:
        return cls.__name__.removesuffix("IOManager").lower()
    if sys.platform == "win32":
        return "windows"
    return "epoll" if hasattr(select, "epoll") else "kqueue"


def multiplexers() -> list[str]:
    """The readiness APIs the ``select`` module offers here."""
    return [
        name for name in ("select", "poll", "epoll", "kqueue", "devpoll") if hasattr(select, name)
    ]


def _backends_fact() -> SystemFact:
    missing = [
        f"{name} (needs {missing_feature(name)})" for name in BACKENDS if missing_feature(name)
    ]
    hint = f"not on this platform: {', '.join(missing)}" if missing else None
    return SystemFact(name="backends", value=available_backends(), hint=hint)


def _cpu_affinity_fact() -> SystemFact:
    cpus = cpu_affinity()
    if cpus is None:
        return SystemFact(
            name="usable_cpus",
            value=None,
            hint="CPU affinity is unavailable on this platform: triosrv bench runs unpinned",
        )
    return SystemFact(name="usable_cpus", value=len(cpus))


def fd_setsize() -> int:
    """FD_SETSIZE as ``select.select`` enforces it, measured without opening an fd.

    ``select.select`` raises ValueError for an fd number at or above FD_SETSIZE and
    EBADF (or succeeds) below it, so a binary search over fd numbers finds the bound.
    """
    low, high = 0, _FD_NUMBER_BOUND  # select accepts low; high is assumed too big
    while high - low > 1:
        middle = (low + high) // 2
        try:
            select.select([middle], [], [], 0)
        except ValueError:
            high = middle
            continue
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
        low = middle
    return high


def _nofile_facts(max_connections: int) -> list[SystemFact]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    needed = max_connections + FIXED_FDS
    soft_hint = None
    if soft != unlimited and soft < needed:
        raise_to = needed if hard == unlimited else min(hard, needed)
        soft_hint = (
            f"limits the server to about {max(soft - FIXED_FDS, 0)} connections, below "
            f"max_connections {max_connections}; raise it with `ulimit -n {raise_to}`"
        )
    hard_hint = None
    if hard != unlimited and hard < needed:
        hard_hint = f"even the hard limit is below max_connections {max_connections}"
    return [
        SystemFact(
            name="rlimit_nofile_soft", value=None if soft == unlimited else soft, hint=soft_hint
        ),
        SystemFact(
            name="rlimit_nofile_hard", value=None if hard == unlimited else hard, hint=hard_hint
        ),
    ]


def _select_fact(max_connections: int) -> SystemFact:
    size = fd_setsize()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    hint = None
    if soft == resource.RLIM_INFINITY or soft > size or max_connections + FIXED_FDS > size:
        others = [name for name in ("epoll", "poll", "trio") if name in available_backends()]
        hint = (
            f"the select backend refuses connections whose fd is {size} or above; "
            f"use {', '.join(others[:-1])} or {others[-1]} for more"
        )
    return SystemFact(name="fd_setsize", value=size, hint=hint)


def _somaxconn_fact() -> SystemFact:
    text = _read_proc("/proc/sys/net/core/somaxconn")
    if text is None:
        return SystemFact(name="somaxconn", value=None, hint="not readable on this platform")
    value = int(text)
    hint = None
    if value < SMALL_BACKLOG:
        hint = (
            f"listen backlogs are capped at {value}: a burst of more clients overflows "
            "the accept queue and they retry their SYN after 1 s"
        )
    return SystemFact(name="somaxconn", value=value, hint=hint)


def _port_range_fact() -> SystemFact:
    text = _read_proc("/proc/sys/net/ipv4/ip_local_port_range")
    if text is None:
        return SystemFact(name="ephemeral_ports", value=None, hint="not readable on this platform")
    first, last = (int(part) for part in text.split())
    count = last - first + 1
    hint = None
    if count < FEW_EPHEMERAL_PORTS:
        hint = (
            f"only {count} outgoing connections to one address at a time: load "
            "generators and proxies on this host run out (EADDRNOTAVAIL)"
        )
    return SystemFact(name="ephemeral_ports", value=[first, last], hint=hint)


def _stdio_facts() -> list[SystemFact]:
    facts = []
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        target = fd_target(fd)
        hint = None
        if target is None:
            hint = (
                f"fd {fd} is closed: the next socket may get number {fd}, and a stray "
                "print or log line would then go to a client"
            )
        facts.append(SystemFact(name=f"fd{fd}_{name}", value=target, hint=hint))
    return facts


def system_facts(*, max_connections: int = 1000) -> list[SystemFact]:
    """Collect the facts; the hints compare limits against ``max_connections``."""
    return [
        SystemFact(
            name="python", value=f"{platform.python_implementation()} {platform.python_version()}"
        ),
        SystemFact(name="trio", value=trio.__version__),
        SystemFact(name="platform", value=f"{platform.system()} {platform.release()}"),
        SystemFact(name="cpus", value=os.cpu_count()),
        SystemFact(name="io_manager", value=io_manager_name()),
        SystemFact(name="multiplexers", value=multiplexers()),
        _backends_fact(),
        _cpu_affinity_fact(),
        _select_fact(max_connections),
        *_nofile_facts(max_connections),
        _somaxconn_fact(),
        _port_range_fact(),
        *_stdio_facts(),
    ]


def _display(fact: SystemFact) -> object:
    if fact.name == "ephemeral_ports" and isinstance(fact.value, list):
        return "-".join(str(v) for v in fact.value)
    if isinstance(fact.value, list):
        return " ".join(str(v) for v in fact.value)
    if fact.value is None and fact.name.startswith("rlimit"):
        return "unlimited"
    return fact.value


def render_system(facts: list[SystemFact]) -> str:
    """The facts as a table: fact, value, hint."""
    return render_table(
        ("FACT", "VALUE", "HINT"), [(f.name, _display(f), f.hint or "") for f in facts]
    )
