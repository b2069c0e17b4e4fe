"""The ``blocking`` backend: the textbook threaded server, a thread per connection.

Each accepted socket is switched back to blocking mode and served by a worker thread
that runs the protocol's driver loop with plain blocking ``recv``/``send`` calls. The
connection's trio task only waits for its thread
(:func:`~triosrv.lowlevel.run_sync_interruptible`).

Cancellation cannot interrupt a thread, but it can interrupt a blocking call: when the
task is cancelled (shutdown after grace, a hard stop) or a timeout is due, the socket
is ``shutdown(SHUT_RDWR)``. A blocked ``recv`` then returns ``b""``, a blocked ``send``
fails with EPIPE, the thread returns, and the task joins it before it closes the fd --
so no thread ever touches a closed (or reused) fd number, and none outlives the server.

The cost is the design's: one thread (and its stack) per connection, and every byte
crosses the GIL. Timeouts are marked before each blocking call (the thread cannot know
whether it will block), with the trio clock read from the thread as
``perf_counter() + offset``.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import time
from collections.abc import Callable

import trio

from .._isolation import is_handler_failure, rate_limited
from ..lowlevel import ConnectionRecord, close_fd, run_sync_interruptible
from ..lowlevel._record import NOT_WAITING, RECEIVING, SENDING
from ..lowlevel._sizes import SEND_SIZE
from ..protocols import Protocol, answer_method
from ._base import AcceptingBackend

logger = logging.getLogger("triosrv")


class ThreadConnection(ConnectionRecord):
    """A connection served by a thread (see :class:`ConnectionRecord`)."""

    __slots__ = ("shut", "sock")

    def __init__(self, sock: socket.socket, *, peer: str, local: str, now: float) -> None:
        super().__init__(peer=peer, local=local, started_at=now)
        self.sock = sock
        self.shut = False
        self.waiting = NOT_WAITING

    def stop(self) -> None:
        """Wake whatever blocking call the thread is in: ``shutdown(SHUT_RDWR)``."""
        # From the trio thread, while the fd is still open (it is closed only after
        # the thread returned).
        if self.shut:
            return
        self.shut = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            # ENOTCONN: the peer is gone already, nothing to wake. Anything else must
            # not escape either: this runs in the deadline keeper and in cancellation,
            # which serve every connection (_isolation.py); the thread still ends at
            # its next timeout check.
            if exc.errno != errno.ENOTCONN:
                logger.warning(
                    "connection %d: shutdown() to stop its thread failed: %s",
                    self.id,
                    exc,
                    extra=rate_limited("stop_error"),
                )


class BlockingBackend(AcceptingBackend):
    """A thread per connection with blocking calls; see the module docstring."""

    name = "blocking"

    async def start(self, listen_nursery: trio.Nursery, conn_nursery: trio.Nursery) -> None:
        """Start accepting; remember how to read the trio clock from threads."""
        self._clock_offset = trio.current_time() - time.perf_counter()
        await super().start(listen_nursery, conn_nursery)

    def serve_socket(self, sock: socket.socket, peer: str, local: str) -> None:
        """Track the connection and start the task that runs its thread."""
        sock.setblocking(True)
        conn = ThreadConnection(sock, peer=peer, local=local, now=trio.current_time())
        self.host.track(conn)
        self._conn_nursery.start_soon(
            self._run_connection, conn, name=f"triosrv connection {conn.id} from {conn.peer}"
        )

    async def _run_connection(self, conn: ThreadConnection) -> None:
        serve = functools.partial(self._serve_in_thread, conn, self.protocol_factory)
        try:
            try:
                broken = await run_sync_interruptible(
                    serve, conn.stop, name=f"triosrv connection {conn.id}"
                )
            except BaseException as exc:
                if not is_handler_failure(exc):
                    raise
                self.host.count_failure(conn, exc)
            else:
                if broken is not None:
                    self.host.count_broken(conn, broken)
        finally:
            self.host.untrack(conn)
            close_fd(conn.sock)

    def _serve_in_thread(
        self, conn: ThreadConnection, factory: Callable[[], Protocol]
    ) -> OSError | None:
        # The driver loop with blocking calls; runs in a worker thread. Returns the
        # socket error that ended the connection (a broken peer), if any; what the
        # protocol raises propagates (a handler error).
        protocol = factory()
        recv, send = conn.sock.recv, conn.sock.send
        recv_size = self.host.config.limits.recv_size
        offset = self._clock_offset
        clock = time.perf_counter
        answer = answer_method(protocol)
        answer_size = max(SEND_SIZE, recv_size)  # no receive is longer: see answer()
        pending: bytes | None = None  # an answer still to send
        while not conn.shut:
            if pending is None:
                out = protocol.data_to_send(SEND_SIZE)
            else:
                out, pending = pending, None
            if out:
                with memoryview(out) as view:
                    sent = 0
                    while sent < len(view):
                        conn.waiting_since = clock() + offset
                        conn.waiting = SENDING
                        try:
                            n = send(view[sent:])
                        except OSError as exc:
                            return None if conn.shut else exc
                        finally:
                            conn.waiting = NOT_WAITING
                        sent += n
                        conn.bytes_sent += n
            elif protocol.close_after_flush:
                return None
            else:
                conn.waiting_since = clock() + offset
                conn.waiting = RECEIVING
                try:
                    data = recv(recv_size)
                except OSError as exc:
                    return None if conn.shut else exc
                finally:
                    conn.waiting = NOT_WAITING
                if conn.shut:
                    return None  # that b"" was our own shutdown, not the peer's EOF
                conn.bytes_received += len(data)
                reply = answer(data, answer_size) if answer is not None and data else None
                if reply is None:
                    protocol.receive_data(data)
                else:
                    pending = reply  # all the protocol has to say: sent before asking it
        return None
