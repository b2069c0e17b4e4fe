"""The single-loop backends: ``epoll``, ``poll``, ``select`` and ``nonblocking``.

All four run :class:`triosrv.lowlevel.EventLoop` -- one task for the listeners and
every connection -- and differ only in the multiplexer it waits with. This module is
the loop's host: it answers the loop's questions with the server's admission, counters
and log, so the loop itself knows nothing of :class:`~triosrv.Server`.
"""

from __future__ import annotations

import abc
import logging
import socket

import trio

from .._config import BACKENDS
from .._handlers import Handler
from .._listeners import Listener
from ..lowlevel import (
    ConnectionRecord,
    EpollMultiplexer,
    EventLoop,
    Multiplexer,
    NonblockingMultiplexer,
    PollMultiplexer,
    SelectMultiplexer,
)
from ._base import Backend, BackendHost

logger = logging.getLogger("triosrv")

# At most one "refused: fd over FD_SETSIZE" warning per this many seconds; the
# counter in the statistics has them all.
REFUSAL_LOG_INTERVAL = 1.0


class LoopBackend(Backend):
    """One :class:`~triosrv.lowlevel.EventLoop` over the backend's multiplexer."""

    def __init__(self, host: BackendHost, handler: Handler) -> None:
        super().__init__(host, handler)
        self.loop: EventLoop | None = None
        self._wait_mode = host.config.limits.overload == "wait"
        self._listener_by_fd: dict[int, Listener] = {}
        self._last_refusal_log = -float("inf")

    @abc.abstractmethod
    def _make_multiplexer(self) -> Multiplexer:
        """The multiplexer this design waits with (owned by the loop)."""

    async def start(self, listen_nursery: trio.Nursery, conn_nursery: trio.Nursery) -> None:
        """Start the loop in the connection nursery; return once it watches the listeners."""
        await conn_nursery.start(self._run_loop, name=f"triosrv {self.name} loop")

    async def _run_loop(self, *, task_status: trio.TaskStatus[None]) -> None:
        factory = self.protocol_factory
        mux = self._make_multiplexer()
        # The server binds its listeners after building the backend: map them now.
        self._listener_by_fd = {lst.sock.fileno(): lst for lst in self.host.listeners}
        listeners = [lst.sock for lst in self.host.listeners]
        loop = EventLoop(self, mux, listeners, factory, recv_size=self.host.config.limits.recv_size)
        if isinstance(mux, NonblockingMultiplexer):
            mux.progress = loop.progress
        self.loop = loop
        await loop.run(task_status=task_status)  # closes mux when it ends

    async def stop_accepting(self) -> None:
        """Ask the loop to stop watching the listeners and wait until it has."""
        if self.loop is not None:
            self.loop.stop_accepting()
            await self.loop.not_accepting.wait()

    # -- LoopHost: the loop asks, the server answers ----------------------------------

    def should_accept(self) -> bool:
        """False while full in ``overload="wait"`` mode."""
        return not (self._wait_mode and self.host.is_full())

    def admit(self, sock: socket.socket, addr: object) -> tuple[str, str] | None:
        """The server's admission: count, reject when full, configure."""
        return self.host.admit(sock, addr)

    def opened(self, conn: ConnectionRecord) -> None:
        """Track the connection in the server's table."""
        self.host.track(conn)

    def closed(self, conn: ConnectionRecord) -> None:
        """Untrack the connection."""
        self.host.untrack(conn)

    def failed(self, conn: ConnectionRecord, exc: BaseException) -> None:
        """The protocol raised: a handler error."""
        self.host.count_failure(conn, exc)

    def broken(self, conn: ConnectionRecord, exc: OSError) -> None:
        """A socket call failed: the peer went away."""
        self.host.count_broken(conn, exc)

    def accept_failed(self, listener: socket.socket, exc: OSError) -> float:
        """Count, shed on EMFILE, log; return the pause (see _isolation.py)."""
        return self.host.accept_failed(self._listener_by_fd[listener.fileno()], exc)

    def refused(self, sock: socket.socket, fd_limit: int) -> None:
        """An fd select() cannot watch: count it; log now and then."""
        refused = self.host.count_refused()
        now = trio.current_time()
        if now - self._last_refusal_log < REFUSAL_LOG_INTERVAL:
            return
        self._last_refusal_log = now
        others = ", ".join(b for b in BACKENDS if b != "select")
        logger.warning(
            "refused a connection: its fd %d is at or above FD_SETSIZE (%d), the most "
            "select() can watch (%d refused so far); the %s backends have no such limit",
            sock.fileno(),
            fd_limit,
            refused,
            others,
        )


class EpollBackend(LoopBackend):
    """The loop over epoll."""

    name = "epoll"

    def _make_multiplexer(self) -> Multiplexer:
        return EpollMultiplexer(edge_triggered=True)


class PollBackend(LoopBackend):
    """The loop over poll() in a worker thread."""

    name = "poll"

    def _make_multiplexer(self) -> Multiplexer:
        return PollMultiplexer()


class SelectBackend(LoopBackend):
    """The loop over select() in a worker thread; fds below FD_SETSIZE only."""

    name = "select"

    def _make_multiplexer(self) -> Multiplexer:
        return SelectMultiplexer()


class NonblockingBackend(LoopBackend):
    """The loop trying every fd, sleeping ``nonblocking_interval`` when idle."""

    name = "nonblocking"

    def _make_multiplexer(self) -> Multiplexer:
        return NonblockingMultiplexer(self.host.config.nonblocking_interval)
