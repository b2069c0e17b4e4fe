"""Helpers for testing servers and handlers: triosrv's own suite uses them too.

- :func:`open_test_server`: serve a handler on loopback for the length of a block and
  get its address; checks on exit that nothing leaked.
- :class:`FaultyStream` and :class:`Faults`: wrap any trio stream (a socket, one end
  of ``trio.testing.memory_stream_pair()``) so that it delays, drips, stalls, aborts or
  truncates, reproducibly from a seed, in virtual time under ``MockClock``.
- :func:`check_no_leaks`: a context manager failing with the list of fds, threads and
  tasks a block left behind; the same as a pytest fixture, ``leak_check``, in
  :mod:`triosrv.testing.pytest_plugin`.
- :func:`cancellation_sweep`: cancel a scenario before each of its scheduling steps
  in turn and check that only ``Cancelled`` came out and nothing leaked.
- :func:`wait_for`: poll a condition that has no event to wait on (a server's
  statistics), with a timeout, in trio's clock (virtual under ``MockClock``).
- :func:`platform_env` and :func:`without_proc`: run Python subprocesses as on a
  platform without epoll, eventfd, CPU affinity and /proc (macOS, the BSDs), on Linux.
"""

from __future__ import annotations

from ._faults import Faults, FaultyStream
from ._leaks import LeakError, Leaks, Snapshot, check_no_leaks, leaks_since, open_fds
from ._platform import platform_env, without_proc
from ._server import RunningServer, open_test_server
from ._sweep import SweepError, SweepReport, Trial, cancellation_sweep
from ._wait import wait_for

__all__ = [
    "Faults",
    "FaultyStream",
    "LeakError",
    "Leaks",
    "RunningServer",
    "Snapshot",
    "SweepError",
    "SweepReport",
    "Trial",
    "cancellation_sweep",
    "check_no_leaks",
    "leaks_since",
    "open_fds",
    "open_test_server",
    "platform_env",
    "wait_for",
    "without_proc",
]
