"""The ``nonblocking`` design's multiplexer: no multiplexer at all, every fd is tried.

The backend, this module and its class share the name of the design (non-blocking
sockets tried in turn, a sleep when idle); ``TryEveryFd`` is its former name.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ._multiplexers import Multiplexer, Ready


class NonblockingMultiplexer(Multiplexer):
    """Not a multiplexer but the absence of one: every wait reports every fd.

    The loop then tries each syscall and gets ``BlockingIOError`` where nothing is
    ready: the non-blocking-sockets design. When the pass before moved nothing (as
    measured by ``progress``, e.g. :meth:`EventLoop.progress`), the wait sleeps
    ``interval`` seconds first: the classic busy loop's CPU/latency trade-off, made
    explicit. :meth:`wakeup` does not cut the sleep short; the loop sees its request
    after at most one interval.
    """

    name = "none (tries every fd)"

    def __init__(self, interval: float) -> None:
        super().__init__(wake_fd=False)
        self.interval = interval
        self.progress: Callable[[], int] = lambda: 0
        self._last = -1

    def _register(self, fd: int, events: int) -> None:
        pass

    def _modify(self, fd: int, events: int) -> None:
        pass

    def _unregister(self, fd: int) -> None:
        pass

    def wakeup(self) -> None:
        """Nothing to interrupt: the loop looks at its flags after each sleep."""

    def poll_now(self) -> Ready:
        """Nothing: each pass of the busy loop goes through :meth:`wait`."""
        return []

    async def wait(self, timeout: float | None = None) -> Ready:
        """Every registered fd with its events, after a sleep if nothing moved."""
        marker = self.progress()
        if marker == self._last:
            interval = self.interval if timeout is None else min(self.interval, timeout)
            await trio.sleep(interval)
        else:
            await trio.lowlevel.checkpoint()
        self._last = marker
        self.calls += 1
        self.last_watched = len(self._interest)
        return list(self._interest.items())


#: The former name of :class:`NonblockingMultiplexer`, kept for existing imports.
TryEveryFd = NonblockingMultiplexer
