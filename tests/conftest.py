"""Shared fixtures: every test is checked for leaked fds, threads and triosrv tasks."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import trio


def open_fds() -> dict[int, str]:
    """This process's open fds and what they point at."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the fd listdir itself used, already closed
            pass
    return fds


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves an fd or a thread behind."""
    fds_before = open_fds()
    threads_before = set(threading.enumerate())
    yield
    leaked_fds = {fd: target for fd, target in open_fds().items() if fds_before.get(fd) != target}
    # trio keeps finished worker threads idle in a cache for a few seconds to reuse
    # them ("Trio thread N"); they hold no resource of ours, so they are not leaks.
    leaked_threads = [
        t
        for t in threading.enumerate()
        if t not in threads_before and t.is_alive() and not t.name.startswith("Trio thread")
    ]
    assert not leaked_fds, f"leaked fds: {leaked_fds}"
    assert not leaked_threads, f"leaked threads: {leaked_threads}"


@pytest.fixture
def backend() -> str:
    """The server backend a behavioural test passes to ``running_server``.

    ``trio`` here; ``tests/test_backends.py`` overrides this fixture with one
    parameter per backend and imports the behavioural tests, so each runs once per
    backend (the conformance suite).
    """
    return "trio"


def triosrv_tasks() -> list[str]:
    """Names of the live tasks that triosrv started (call from inside trio)."""
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        if task.name.startswith("triosrv "):
            names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return names
