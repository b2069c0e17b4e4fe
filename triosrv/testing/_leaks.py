"""Leak checks: fds, threads and trio tasks that outlive the code that made them.

A snapshot records what exists; a later comparison lists what is new and still there.
An fd counts as new when its number was free before or now points somewhere else (a
closed fd whose number was reused is a leak too). A thread counts once it has had
``thread_grace`` seconds to finish: one that is merely exiting is not a leak. trio's
idle worker-thread cache ("Trio thread N") holds nothing of the caller's and is not
counted. Tasks are only compared when both snapshots were taken inside trio.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping

import attrs
import trio

from .._platform import fd_target, open_fd_numbers


def open_fds() -> dict[int, str]:
    """This process's open fds and what each points at.

    From ``/proc/self/fd`` on Linux; elsewhere from ``/dev/fd`` or by probing fd numbers,
    each described by ``fstat`` (``socket:[INODE]``, ``pipe:[INODE]``, ...): see
    :func:`triosrv._platform.open_fd_numbers` and :func:`~triosrv._platform.fd_target`.
    """
    fds = {}
    for fd in open_fd_numbers():
        target = fd_target(fd)
        if target is not None:  # closed meanwhile
            fds[fd] = target
    return fds


def _describe_fd(fd: int, target: str) -> str:
    # For a socket, say what it is connected to: "socket:[81234]" alone is no help.
    if not target.startswith("socket:"):
        return f"fd {fd} -> {target}"
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            try:
                peer = f" -> {sock.getpeername()}"
            except OSError:
                peer = ""
            return f"fd {fd} -> {target} ({sock.family.name} {sock.getsockname()}{peer})"
    except OSError:  # closed meanwhile, or not an inet/unix socket
        return f"fd {fd} -> {target}"


def _all_tasks() -> set[trio.lowlevel.Task]:
    tasks: set[trio.lowlevel.Task] = set()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        tasks.add(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return tasks


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


@attrs.frozen(eq=False)
class Snapshot:
    """What existed at one moment: fds, live threads, and trio tasks (None outside trio)."""

    fds: Mapping[int, str]
    threads: frozenset[threading.Thread]
    tasks: frozenset[trio.lowlevel.Task] | None

    @classmethod
    def take(cls) -> Snapshot:
        """Take one now."""
        return cls(
            fds=open_fds(),
            threads=frozenset(threading.enumerate()),
            tasks=frozenset(_all_tasks()) if _in_trio() else None,
        )


@attrs.frozen
class Leaks:
    """What leaked, each as one readable line; falsy when nothing did."""

    fds: tuple[str, ...] = ()
    threads: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.fds or self.threads or self.tasks)

    def describe(self) -> str:
        """One line per leaked thing, grouped by kind."""
        lines = []
        for kind, items in (("fd", self.fds), ("thread", self.threads), ("task", self.tasks)):
            lines += [f"leaked {kind}: {item}" for item in items]
        return "\n".join(lines)


class LeakError(AssertionError):
    """Something leaked; ``leaks`` says what, and so does the message."""

    def __init__(self, leaks: Leaks) -> None:
        super().__init__(leaks.describe())
        self.leaks = leaks


def leaks_since(before: Snapshot, *, thread_grace: float = 1.0) -> Leaks:
    """What exists now that did not in ``before`` (see the module docs for the rules).

    May block up to ``thread_grace`` seconds (real time) waiting for new threads to end.
    """
    new = sorted((fd, t) for fd, t in open_fds().items() if before.fds.get(fd) != t)
    fds = tuple(_describe_fd(fd, target) for fd, target in new)
    deadline = time.monotonic() + thread_grace
    threads = []
    for thread in threading.enumerate():
        if thread in before.threads or thread.name.startswith("Trio thread"):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            threads.append(repr(thread))
    tasks: tuple[str, ...] = ()
    if before.tasks is not None and _in_trio():
        tasks = tuple(sorted(t.name for t in _all_tasks() - before.tasks))
    return Leaks(fds=fds, threads=tuple(threads), tasks=tasks)


@contextlib.contextmanager
def check_no_leaks(*, thread_grace: float = 1.0) -> Iterator[None]:
    """Raise :class:`LeakError` if the block leaves an fd, a thread or a task behind.

    Works inside and outside trio (tasks are checked only inside). Nothing else in the
    process should open or close fds meanwhile, or it will be blamed. If the block
    raises, that exception propagates and leaks are not checked (cleanup after an
    error is the error's story). Exiting may block up to ``thread_grace`` seconds when
    a new thread is still alive::

        with triosrv.testing.check_no_leaks():
            async with triosrv.testing.open_test_server() as server:
                ...
    """
    before = Snapshot.take()
    yield
    leaks = leaks_since(before, thread_grace=thread_grace)
    if leaks:
        raise LeakError(leaks)
