"""Connection: what a handler receives, a trio HalfCloseableStream with deadlines.

Theory of operation
-------------------

Timeouts are the hot path's biggest hidden cost. A fresh ``move_on_after`` around every
receive and send cost about 40% of echo throughput on the machine this was built on, and
one per-connection scope whose deadline is moved before every operation about 13%:
every deadline change re-files the scope in trio's deadline queue.

So a connection never touches a deadline. When an operation is about to *wait* it stores
two plain attributes -- what it waits for (``waiting``) and since when
(``waiting_since``), fields it shares with every backend's
:class:`~triosrv.lowlevel.ConnectionRecord` -- and clears them when the wait ends. One
timer task per server (:class:`DeadlineKeeper`) wakes at the earliest moment any
connection could be due, looks at those attributes, and cancels the connection's own
cancel scope when a wait has lasted too long, after writing down which kind fired
(``timed_out``). The operation that was waiting sees ``trio.Cancelled``, notices
``timed_out`` and raises :class:`~triosrv.IdleTimeout` / :class:`~triosrv.WriteTimeout`
/ :class:`~triosrv.LifetimeTimeout` instead, so the handler learns why. The minimum
receive rate rides on the same scan (:class:`~triosrv.SlowReceiveTimeout`; see
``_deadlines.py``): it reads ``bytes_received``, which a receive updates anyway.

:class:`Connection` is the abstract base a handler sees; two siblings implement it:

- :class:`StreamConnection` wraps any trio stream (memory streams in tests,
  ``SSLStream``): it marks every operation as a wait, since it cannot know whether it
  will block.
- :class:`SocketConnection` drives a non-blocking socket itself with trio's
  ``wait_readable``/``wait_writable``, exactly as ``trio.SocketStream`` does minus its
  layers, and marks only the operations that really block. This is the fast path.
"""

from __future__ import annotations

import abc
import socket
from typing import TYPE_CHECKING

import trio

from ._errors import (
    ConnectionTimeout,
    HandshakeTimeout,
    IdleTimeout,
    LifetimeTimeout,
    SlowReceiveTimeout,
    WriteTimeout,
)
from ._one_sender import WrapsSends
from .lowlevel._record import NOT_WAITING, RECEIVING, SENDING, ConnectionRecord

if TYPE_CHECKING:
    from trio.lowlevel import Task

    from ._config import Timeouts

_TIMEOUT_TYPES: dict[str, type[ConnectionTimeout]] = {
    "idle": IdleTimeout,
    "write": WriteTimeout,
    "lifetime": LifetimeTimeout,
    "handshake": HandshakeTimeout,
}


class Connection(ConnectionRecord, trio.abc.HalfCloseableStream):
    """One client connection, as a handler sees it (an abstract base).

    A :class:`trio.abc.HalfCloseableStream` with:

    - ``id`` (per server), ``peer`` and ``local`` (``HOST:PORT``, ``[V6]:PORT`` or
      ``unix``), ``bytes_received`` and ``bytes_sent``;
    - ``draining``: True once the server is shutting down gracefully; a long-lived
      handler should finish what it is doing and return;
    - ``async for chunk in conn``: the received chunks until the peer's EOF;
    - ``cancel_scope``: the scope the server runs the handler in; cancelling it ends
      the connection (the deadline keeper does that when a timeout fires);
    - ``task``: the trio task serving it, once it runs.

    Timeouts (see :class:`~triosrv.Timeouts`): a receive that waits longer than
    ``idle`` raises :class:`~triosrv.IdleTimeout`, a send blocked longer than ``write``
    raises :class:`~triosrv.WriteTimeout`; past ``lifetime`` the connection is cancelled
    and its pending operation raises :class:`~triosrv.LifetimeTimeout`; a peer sending
    below ``min_receive_rate`` gets :class:`~triosrv.SlowReceiveTimeout`. Once a timeout
    has fired the connection's scope is cancelled: the handler can clean up but not
    talk to the peer any more. The server counts the timeout and closes the connection.
    The deadline bookkeeping (``waiting``, ``waiting_since``, :meth:`next_timeout`,
    :meth:`expire`) is that of :class:`~triosrv.lowlevel.ConnectionRecord`, which every
    backend's connections share.

    The server owns the connection and closes it when the handler returns; a handler may
    close it earlier with :meth:`aclose`.

    The implementations are :class:`StreamConnection` (any trio stream) and
    :class:`SocketConnection` (a socket, the fast path). ``Connection(stream, ...)``
    still builds a :class:`StreamConnection`, as it did when this class was one.
    """

    def __new__(cls, *args: object, **kwargs: object) -> Connection:
        # Connection(stream) predates the split into siblings; it keeps working (as
        # pathlib.Path() picks its flavour). Subclasses are built as themselves.
        if cls is Connection:
            cls = StreamConnection
        return super().__new__(cls)

    def __init__(
        self, *, peer: str = "?", local: str = "?", id: int = 0, recv_size: int = 65536
    ) -> None:
        super().__init__(peer=peer, local=local, started_at=trio.current_time())
        self.id = id
        self.waiting = NOT_WAITING
        self.cancel_scope = trio.CancelScope()
        self.task: Task | None = None
        self._recv_size = recv_size
        self._receiving = False
        self._sending = False
        self._timeouts: Timeouts | None = None

    def __repr__(self) -> str:
        return f"<triosrv.Connection {self.id} from {self.peer}>"

    @abc.abstractmethod
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive at most ``max_bytes`` (default ``Limits.recv_size``); ``b""`` at EOF."""

    # -- what the deadline keeper uses ------------------------------------------

    def expire(self, kind: str, timeouts: Timeouts) -> None:
        """The ``kind`` timeout fired: note it and cancel :attr:`cancel_scope`; the
        operation that was waiting raises the matching :class:`~triosrv.ConnectionTimeout`."""
        self._timeouts = timeouts
        super().expire(kind, timeouts)

    def stop(self) -> None:
        """Cancel :attr:`cancel_scope` (see :meth:`ConnectionRecord.stop`)."""
        self.cancel_scope.cancel()

    def _raise_if_timed_out(self) -> None:
        # Called in ``except trio.Cancelled``: if the keeper cancelled us because a
        # timeout fired, raise that timeout in place of the Cancelled, so the handler
        # learns why; otherwise return, and the caller re-raises the Cancelled.
        kind = self._expired
        if kind is None:
            return
        timeouts = self._timeouts
        if kind == "slow_receive" and timeouts is not None:
            raise SlowReceiveTimeout(
                timeouts.min_receive_rate_window, rate=timeouts.min_receive_rate
            ) from None
        raise _TIMEOUT_TYPES[kind](getattr(timeouts, kind, None)) from None


class StreamConnection(WrapsSends, Connection):
    """A :class:`Connection` over any trio stream (``stream``), which it owns.

    It cannot know whether an operation will block, so it marks each one as a wait
    for the deadline keeper. Used for :meth:`Server.add_stream` (memory streams in
    tests) and, as :class:`~triosrv._preamble.TLSConnection`, for TLS.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        peer: str = "?",
        local: str = "?",
        id: int = 0,
        recv_size: int = 65536,
    ) -> None:
        super().__init__(peer=peer, local=local, id=id, recv_size=recv_size)
        self.stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive at most ``max_bytes`` (default ``Limits.recv_size``); ``b""`` at EOF."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        self._receiving = True
        self.waiting_since = trio.current_time()
        self.waiting = RECEIVING
        try:
            data = await self.stream.receive_some(
                self._recv_size if max_bytes is None else max_bytes
            )
        except trio.Cancelled:
            self._raise_if_timed_out()
            raise
        finally:
            self.waiting = NOT_WAITING
            self._receiving = False
        self.bytes_received += len(data)
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; a wait longer than ``write`` raises WriteTimeout."""
        with self._send_guard():
            self.waiting_since = trio.current_time()
            self.waiting = SENDING
            try:
                await self.stream.send_all(data)
            except trio.Cancelled:
                self._raise_if_timed_out()
                raise
            finally:
                self.waiting = NOT_WAITING
        self.bytes_sent += len(data)

    async def aclose(self) -> None:
        """Close the connection and its stream (idempotent)."""
        await self.stream.aclose()


class SocketConnection(Connection):
    """A :class:`Connection` that drives a non-blocking socket (``sock``) directly.

    It does what ``trio.SocketStream`` does -- try the syscall, and only when it
    would block wait for readiness with ``trio.lowlevel.wait_readable`` /
    ``wait_writable`` -- without the layers in between, and it marks only real waits
    for the deadline keeper. Each operation is a full trio checkpoint. It owns and
    closes ``sock``.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        peer: str = "?",
        local: str = "?",
        id: int = 0,
        recv_size: int = 65536,
    ) -> None:
        super().__init__(peer=peer, local=local, id=id, recv_size=recv_size)
        self.sock = sock
        self._closed = False
        self._eof_sent = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive at most ``max_bytes`` (default ``Limits.recv_size``); ``b""`` at EOF."""
        if max_bytes is None:
            max_bytes = self._recv_size
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        if self._closed:
            raise trio.ClosedResourceError("connection was closed")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                data = await self._wait_and_receive(max_bytes)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
        except trio.Cancelled:
            self._raise_if_timed_out()
            raise
        except OSError as exc:
            raise self._os_error(exc) from exc
        finally:
            self._receiving = False
        self.bytes_received += len(data)
        return data

    async def _wait_and_receive(self, max_bytes: int) -> bytes:
        self.waiting_since = trio.current_time()
        self.waiting = RECEIVING
        try:
            while True:
                await trio.lowlevel.wait_readable(self.sock)
                try:
                    return self.sock.recv(max_bytes)
                except BlockingIOError:
                    pass
        finally:
            self.waiting = NOT_WAITING

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; a wait longer than ``write`` raises WriteTimeout.

        Progress restarts the write clock: a slow but steady reader is not timed out.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        if self._closed or self._eof_sent:
            raise trio.ClosedResourceError("can't send after close or EOF")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            total = len(data)
            try:
                sent = self.sock.send(data) if total else 0
            except BlockingIOError:
                sent = 0
            # Counted as it goes: what the peer took before a timeout or a reset was sent.
            self.bytes_sent += sent
            if sent < total:
                await self._send_rest(memoryview(data), sent)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
        except trio.Cancelled:
            self._raise_if_timed_out()
            raise
        except OSError as exc:
            raise self._os_error(exc) from exc
        finally:
            self._sending = False

    async def _send_rest(self, view: memoryview, sent: int) -> None:
        with view:
            total = len(view)
            while sent < total:
                self.waiting_since = trio.current_time()
                self.waiting = SENDING
                try:
                    await trio.lowlevel.wait_writable(self.sock)
                finally:
                    self.waiting = NOT_WAITING
                try:
                    n = self.sock.send(view[sent:])
                except BlockingIOError:
                    continue
                sent += n
                self.bytes_sent += n

    def _os_error(self, exc: OSError) -> Exception:
        if self._closed:
            return trio.ClosedResourceError("connection was closed")
        return trio.BrokenResourceError(f"connection broken: {exc}")

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket is writable."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        if self._closed:
            raise trio.ClosedResourceError("connection was closed")
        self._sending = True
        try:
            await trio.lowlevel.wait_writable(self.sock)
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        """Shut down our sending side (idempotent)."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        if self._closed:
            raise trio.ClosedResourceError("connection was closed")
        await trio.lowlevel.checkpoint()
        if self._eof_sent:
            return
        self._eof_sent = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise self._os_error(exc) from exc

    def close_now(self) -> None:
        """Close the socket at once, waking any task waiting on it (idempotent)."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def aclose(self) -> None:
        """Close the connection (idempotent); a checkpoint."""
        self.close_now()
        await trio.lowlevel.checkpoint()
