"""serve() and Server: the nursery tree, accept loops, admission, drain, statistics.

The tree (DESIGN.md)::

    serve()                               server scope: cancelling it is a hard stop
     +- connection nursery                one task per connection, owns its fd
     |   +- deadline keeper               fires idle/write/lifetime timeouts
     |   +- connection task ...           runs the handler in the connection's scope
     +- listener nursery                  one accept loop per listening socket

Shutdown has three bounded steps: the listener nursery is cancelled and the listening
sockets closed, so the kernel refuses newcomers at once; running connections are told
(``conn.draining``) and get ``grace`` seconds; then the connection nursery is cancelled.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import attrs
import trio

from ._accept import RESOURCE_ERRNOS, FdReserve
from ._config import ServerConfig
from ._connection import Connection, SocketConnection
from ._deadlines import DeadlineKeeper
from ._errors import TIMEOUT_KINDS, ConnectionTimeout
from ._listeners import Listener, configure_accepted, format_local, format_peer, open_listeners

logger = logging.getLogger("triosrv")

Handler = Callable[[Connection], Awaitable[object]]

# After an out-of-resources accept error, how long the accept loop rests.
ACCEPT_PAUSE = 0.1
# How many connections one accept loop takes from the kernel before it lets other
# tasks run. Taking the whole queue in one go is what makes a burst of 1000 clients
# cheap: one accept per scheduler pass made trio.serve_tcp quadratic in the burst.
ACCEPT_BATCH = 256


@attrs.frozen(kw_only=True)
class ServerStatistics:
    """A snapshot of a server's counters, from :meth:`Server.statistics`."""

    state: Literal["starting", "serving", "draining", "closed"]
    active: int
    peak_active: int
    accepted: int
    rejected: int
    completed: int
    handler_errors: int
    broken: int
    timeouts: Mapping[str, int]
    bytes_received: int
    bytes_sent: int
    accept_errors: int
    #: Connections accepted and closed at once while out of fds (see ``_accept.py``).
    shed: int


class Server:
    """A running server, as returned by ``await nursery.start(triosrv.serve, ...)``.

    Do not build one yourself; :func:`serve` does.
    """

    def __init__(self, handler: Handler, config: ServerConfig) -> None:
        self.config = config
        self._handler = handler
        self._listeners: list[Listener] = []
        self._state: Literal["starting", "serving", "draining", "closed"] = "starting"
        self._live: dict[int, Connection] = {}
        self._keeper = DeadlineKeeper(config.timeouts, self._live)
        self._next_id = 0
        self._peak = self._accepted = self._rejected = self._completed = 0
        self._handler_errors = self._broken = self._accept_errors = self._shed = 0
        self._reserve: FdReserve | None = None
        self._closed_bytes_in = self._closed_bytes_out = 0
        self._slot_freed: trio.Event | None = None
        self._all_done: trio.Event | None = None
        self._closed = trio.Event()
        self._grace = config.timeouts.grace
        self._listen_scope: trio.CancelScope | None = None
        self._conn_nursery: trio.Nursery | None = None
        self.addresses: list[str] = []

    # -- public -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"starting"``, ``"serving"``, ``"draining"`` or ``"closed"``."""
        return self._state

    def statistics(self) -> ServerStatistics:
        """A frozen snapshot of the counters; cheap enough to call often."""
        live = self._live.values()
        return ServerStatistics(
            state=self._state,
            active=len(self._live),
            peak_active=self._peak,
            accepted=self._accepted,
            rejected=self._rejected,
            completed=self._completed,
            handler_errors=self._handler_errors,
            broken=self._broken,
            timeouts={kind: self._keeper.fired[kind] for kind in TIMEOUT_KINDS},
            bytes_received=self._closed_bytes_in + sum(c.bytes_received for c in live),
            bytes_sent=self._closed_bytes_out + sum(c.bytes_sent for c in live),
            accept_errors=self._accept_errors,
            shed=self._shed,
        )

    def connections(self) -> list[Connection]:
        """The live connections (the objects themselves; read, don't keep)."""
        return list(self._live.values())

    def shutdown(self, grace: float | None = None) -> None:
        """Start the graceful shutdown; returns at once (idempotent).

        Listening sockets close now; connections get ``grace`` seconds (default
        ``Timeouts.grace``; ``math.inf`` waits for ever) to finish, then are cancelled.
        Calling it again with a shorter grace shortens the drain.
        """
        if grace is not None and (math.isnan(grace) or grace < 0):
            raise ValueError(f"grace: expected seconds >= 0, got {grace!r}")
        if self._state in ("starting", "serving"):
            self._grace = self.config.timeouts.grace if grace is None else grace
            self._state = "draining"
            for conn in self._live.values():
                conn.draining = True
            if self._listen_scope is not None:
                self._listen_scope.cancel()
        elif self._state == "draining" and grace is not None:
            self._grace = grace if self._grace is None else min(self._grace, grace)
            if self._drain_scope is not None:
                self._drain_scope.deadline = min(
                    self._drain_scope.deadline, trio.current_time() + grace
                )

    async def wait_closed(self) -> None:
        """Wait until the server has stopped and closed every fd it opened."""
        await self._closed.wait()

    async def add_stream(
        self, stream: trio.abc.Stream, *, peer: str = "memory", local: str = "memory"
    ) -> Connection | None:
        """Serve an already-connected trio stream as if it had just been accepted.

        Admission applies: with ``overload="wait"`` this waits for a free slot, with
        ``"reject"`` a full server closes the stream and returns None. The server owns
        the stream from here on. Meant for tests over ``trio.testing.memory_stream_pair``
        and for streams a program obtained some other way.
        """
        if self._conn_nursery is None or self._state not in ("serving", "starting"):
            await trio.aclose_forcefully(stream)
            raise trio.ClosedResourceError("server is not serving")
        if self.config.limits.overload == "wait":
            await self._wait_for_slot()
        elif len(self._live) >= self.config.limits.max_connections:
            self._rejected += 1
            await trio.aclose_forcefully(stream)
            return None
        conn = Connection(stream, peer=peer, local=local, recv_size=self.config.limits.recv_size)
        self._start_connection(conn)
        return conn

    # -- the tree -------------------------------------------------------------------

    _drain_scope: trio.CancelScope | None = None

    async def _run(self, task_status: trio.TaskStatus[Server]) -> None:
        try:
            self._reserve = FdReserve()
            async with trio.open_nursery() as conn_nursery:
                self._conn_nursery = conn_nursery
                conn_nursery.start_soon(self._keeper.run, name="triosrv deadline keeper")
                async with trio.open_nursery() as listen_nursery:
                    self._listen_scope = listen_nursery.cancel_scope
                    for listener in self._listeners:
                        listen_nursery.start_soon(
                            self._accept_loop, listener, name=f"triosrv listener {listener.address}"
                        )
                    if self._state == "starting":
                        self._state = "serving"
                    else:  # shutdown() was called before we got here
                        listen_nursery.cancel_scope.cancel()
                    task_status.started(self)
                    # Serving lasts until shutdown() cancels this scope, even with no
                    # listener at all (a server fed only through add_stream()).
                    await trio.sleep_forever()
                self._close_listeners()
                await self._drain()
                conn_nursery.cancel_scope.cancel()
        finally:
            self._close_listeners()
            if self._reserve is not None:
                self._reserve.close()
            self._state = "closed"
            self._closed.set()

    async def _drain(self) -> None:
        self._state = "draining"
        for conn in self._live.values():
            conn.draining = True
        grace = math.inf if self._grace is None else self._grace
        at_start = len(self._live)
        with trio.move_on_after(grace) as self._drain_scope:
            while self._live:
                self._all_done = trio.Event()
                await self._all_done.wait()
        cancelled = len(self._live)
        if at_start:
            logger.info(
                "drain: %d connection(s) finished within grace, %d cancelled",
                at_start - cancelled,
                cancelled,
            )

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            if listener.sock.fileno() != -1:
                trio.lowlevel.notify_closing(listener.sock)
            listener.close()

    async def _wait_for_slot(self) -> None:
        limit = self.config.limits.max_connections
        while len(self._live) >= limit:
            if self._slot_freed is None:
                self._slot_freed = trio.Event()
            await self._slot_freed.wait()

    async def _accept_loop(self, listener: Listener) -> None:
        sock = listener.sock
        wait_mode = self.config.limits.overload == "wait"
        batch = 0
        while True:
            if wait_mode and len(self._live) >= self.config.limits.max_connections:
                await self._wait_for_slot()
            try:
                conn_sock, addr = sock.accept()
            except BlockingIOError:
                batch = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRNOS:
                    raise
                await self._out_of_resources(listener, exc)
                continue
            self._admit(conn_sock, addr)
            batch += 1
            if batch >= ACCEPT_BATCH:
                batch = 0
                await trio.lowlevel.checkpoint()

    async def _out_of_resources(self, listener: Listener, exc: OSError) -> None:
        self._accept_errors += 1
        shed = 0
        if exc.errno in (errno.EMFILE, errno.ENFILE) and self._reserve is not None:
            shed = self._reserve.shed(listener.sock)
            self._shed += shed
        logger.warning(
            "accept on %s: %s; closed %d queued connection(s), pausing %g s",
            listener.address,
            exc.strerror,
            shed,
            ACCEPT_PAUSE,
        )
        await trio.sleep(ACCEPT_PAUSE)

    def _admit(self, sock: socket.socket, addr: object) -> None:
        self._accepted += 1
        if len(self._live) >= self.config.limits.max_connections:
            self._rejected += 1
            sock.close()
            return
        try:
            configure_accepted(sock)
            peer = format_peer(sock, addr)
            local = format_local(sock)
        except OSError:  # the peer reset before we looked at it: nothing to serve
            self._broken += 1
            sock.close()
            return
        conn = SocketConnection(
            sock, peer=peer, local=local, recv_size=self.config.limits.recv_size
        )
        self._start_connection(conn)

    def _start_connection(self, conn: Connection) -> None:
        assert self._conn_nursery is not None
        self._next_id += 1
        conn.id = self._next_id
        conn.draining = self._state == "draining"
        self._live[conn.id] = conn
        if len(self._live) > self._peak:
            self._peak = len(self._live)
        self._conn_nursery.start_soon(
            self._run_connection, conn, name=f"triosrv connection {conn.id} from {conn.peer}"
        )

    async def _run_connection(self, conn: Connection) -> None:
        try:
            with trio.CancelScope() as conn._cancel_scope:
                conn.task = trio.lowlevel.current_task()
                await self._call_handler(conn)
        finally:
            del self._live[conn.id]
            self._completed += 1
            self._closed_bytes_in += conn.bytes_received
            self._closed_bytes_out += conn.bytes_sent
            if self._slot_freed is not None:
                self._slot_freed.set()
                self._slot_freed = None
            if self._all_done is not None and not self._live:
                self._all_done.set()
            await conn._aclose_forcefully()

    async def _call_handler(self, conn: Connection) -> None:
        try:
            await self._handler(conn)
        except (ConnectionTimeout, trio.BrokenResourceError) as exc:
            self._peer_ended(conn, exc)
        except Exception as exc:
            expected, unexpected = _split_expected(exc)
            if unexpected is None:
                self._peer_ended(conn, expected or exc)
                return
            self._handler_errors += 1
            if self.config.handler_errors == "raise":
                raise
            logger.error(
                "handler error on connection %d from %s", conn.id, conn.peer, exc_info=unexpected
            )

    def _peer_ended(self, conn: Connection, exc: BaseException) -> None:
        if not isinstance(exc, ConnectionTimeout) and conn.timed_out is None:
            self._broken += 1
        logger.debug("connection %d from %s ended: %s", conn.id, conn.peer, exc)


def _split_expected(exc: Exception) -> tuple[BaseException | None, BaseException | None]:
    """Split a handler's exception group into peer/timeout endings and real errors."""
    if not isinstance(exc, BaseExceptionGroup):
        return None, exc
    return exc.split((ConnectionTimeout, trio.BrokenResourceError))


async def serve(
    handler: Handler,
    config: ServerConfig | None = None,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on every bind of ``config`` until shut down or cancelled.

    Use it with ``nursery.start``, which returns the :class:`Server` once every
    listener accepts::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(triosrv.serve, handler, config)
            print(server.addresses)        # ["tcp://127.0.0.1:40123"]
            ...
            server.shutdown(grace=5)       # or cancel the nursery: a hard stop
            await server.wait_closed()

    ``handler`` is an async function taking a :class:`Connection`; the server closes
    the connection when it returns. It returns when the server has stopped; then no
    task it started is running and no fd it opened is open. Cancelling it stops
    everything at once.

    Raises :class:`~triosrv.BindError` (before ``started``) if a bind fails, and, with
    ``handler_errors="raise"``, the handler's exception.
    """
    config = config or ServerConfig()
    server = Server(handler, config)
    server._listeners = open_listeners(
        config.bind_specs, backlog=config.backlog, unix_mode=config.unix_mode
    )
    server.addresses = [listener.address for listener in server._listeners]
    await server._run(task_status)
