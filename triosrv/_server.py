"""serve() and Server: the nursery tree, admission, drain, statistics.

The tree (DESIGN.md), as the default ``trio`` backend fills it::

    serve()                               server scope: cancelling it is a hard stop
     +- connection nursery                one task per connection, owns its fd
     |   +- deadline keeper               fires idle/write/lifetime timeouts
     |   +- connection task ...           runs the handler in the connection's scope
     +- listener nursery                  one accept loop per listening socket

The Server owns what every design shares (the state machine, admission counters, the
live-connection table, the deadline keeper, drain, statistics); a backend
(``_backends/``, chosen by ``ServerConfig.backend``) accepts and serves. The loop
backends put one task in the connection nursery instead of one per connection; the
``blocking`` backend's connection tasks each wait for a thread.

Shutdown has three bounded steps: the listener nursery is cancelled (and the backend
told to stop watching the listeners) and the listening sockets closed, so the kernel
refuses newcomers at once; running connections are told (``conn.draining``) and get
``grace`` seconds; then the connection nursery is cancelled.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
from collections.abc import Mapping
from typing import Literal

import attrs
import trio

from ._accept import FdReserve
from ._backends import check_backend, make_backend
from ._backends._trio import TrioBackend
from ._blocking_detector import BlockingDetector
from ._config import ServerConfig
from ._connection import Connection, StreamConnection
from ._deadlines import DeadlineKeeper
from ._errors import TIMEOUT_KINDS, ConnectionTimeout
from ._handlers import Handler as Handler  # re-exported: tests and tools import it here
from ._isolation import LOG_LIMIT, RESOURCE_ERRNOS, accept_error_pause, rate_limited
from ._listeners import Listener, configure_accepted, format_local, format_peer, open_listeners
from ._preamble import Preamble
from ._snapshots import ConnectionSnapshot, connection_snapshots
from .lowlevel import ConnectionRecord

logger = logging.getLogger("triosrv")


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
    #: Connections closed before the handler, by kind: ``proxy_header`` (bad or
    #: missing), ``proxy_refused`` (source not allowed), ``tls`` (see ``_preamble.py``).
    handshake_failures: Mapping[str, int] = attrs.field(factory=dict)
    #: Task steps that held the event loop past ``ServerConfig.warn_blocking``.
    blocking_warnings: int = 0
    #: The server design serving (``ServerConfig.backend``).
    backend: str = "trio"
    #: Connections the ``select`` backend refused: their fd was >= FD_SETSIZE (1024).
    refused_fd_setsize: int = 0


class Server:
    """A running server, as returned by ``await nursery.start(triosrv.serve, ...)``.

    Do not build one yourself; :func:`serve` does.
    """

    def __init__(self, handler: Handler, config: ServerConfig) -> None:
        self.config = config
        self._handler = handler
        self._listeners: list[Listener] = []
        self._state: Literal["starting", "serving", "draining", "closed"] = "starting"
        self._live: dict[int, ConnectionRecord] = {}
        self._keeper = DeadlineKeeper(config.timeouts, self._live)
        # TLS and PROXY run before the handler (None when neither is configured).
        self._preamble = Preamble.from_config(config, timeouts_fired=self._keeper.fired)
        self._next_id = 0
        self._peak = self._accepted = self._rejected = self._completed = 0
        self._handler_errors = self._broken = self._accept_errors = self._shed = 0
        self._refused_fd_setsize = 0
        self._reserve: FdReserve | None = None
        self._blocking: BlockingDetector | None = None
        self._closed_bytes_in = self._closed_bytes_out = 0
        self._slot_freed: trio.Event | None = None
        self._all_done: trio.Event | None = None
        self._closed = trio.Event()
        self._grace = config.timeouts.grace
        self._listen_scope: trio.CancelScope | None = None
        self._conn_nursery: trio.Nursery | None = None
        self.addresses: list[str] = []
        self._backend = make_backend(self, handler)

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
            handshake_failures=dict(self._preamble.failures) if self._preamble else {},
            blocking_warnings=self._blocking.count if self._blocking else 0,
            backend=self.config.backend,
            refused_fd_setsize=self._refused_fd_setsize,
        )

    def connections(self) -> list[ConnectionSnapshot]:
        """Frozen snapshots of the live connections, by id, on every backend.

        Each :class:`~triosrv.ConnectionSnapshot` gives ``id``, ``peer``, ``local``,
        ``age``, ``idle_for``, what it is ``waiting`` for, the byte counters,
        ``draining``, and the timeout that would fire first (``next_deadline``, with
        ``deadline_in`` seconds left). Call it from inside the server's trio run.
        """
        return connection_snapshots(self)

    def live_connections(self) -> list[ConnectionRecord]:
        """The live connections, in id order, as the server tracks them (a new list).

        For tools that page or watch them (``triosrv.diagnostics``); the objects are
        live, not copies: read them, don't change them. :meth:`connections` gives
        frozen snapshots.
        """
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
                if self._backend.closes_listeners_at_once:
                    self._close_listeners()  # refused from now on, not queued
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
        and for streams a program obtained some other way. Only the ``trio`` backend
        serves streams (RuntimeError otherwise).
        """
        backend = self._backend
        if not isinstance(backend, TrioBackend):
            await trio.aclose_forcefully(stream)
            raise RuntimeError(
                f"add_stream() needs the 'trio' backend; this server runs {backend.name!r}"
            )
        if self._conn_nursery is None or self._state not in ("serving", "starting"):
            await trio.aclose_forcefully(stream)
            raise trio.ClosedResourceError("server is not serving")
        if self.config.limits.overload == "wait":
            await self._wait_for_slot()
            if self._state not in ("serving", "starting"):  # shut down while we waited
                await trio.aclose_forcefully(stream)
                raise trio.ClosedResourceError("server is not serving")
        elif len(self._live) >= self.config.limits.max_connections:
            self._rejected += 1
            await trio.aclose_forcefully(stream)
            return None
        conn = StreamConnection(
            stream, peer=peer, local=local, recv_size=self.config.limits.recv_size
        )
        backend.start_connection(conn)
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
                    await self._backend.start(listen_nursery, conn_nursery)
                    if self._state == "starting":
                        self._state = "serving"
                    else:  # shutdown() was called before we got here
                        listen_nursery.cancel_scope.cancel()
                    task_status.started(self)
                    # Serving lasts until shutdown() cancels this scope, even with no
                    # listener at all (a server fed only through add_stream()).
                    await trio.sleep_forever()
                await self._backend.stop_accepting()
                self._close_listeners()
                await self._drain()
                conn_nursery.cancel_scope.cancel()
        finally:
            self._close_listeners()
            if self._reserve is not None:
                self._reserve.close()
            LOG_LIMIT.flush()  # what the log left out says so before we are gone
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

    # -- what every backend reports to the server (see _backends/_base.py) -----------

    def _admit(self, sock: socket.socket, addr: object) -> tuple[str, str] | None:
        """Count an accepted socket, reject it when full (``overload="reject"``),
        configure it; return (peer, local), or None once it is closed."""
        self._accepted += 1
        if len(self._live) >= self.config.limits.max_connections:
            self._rejected += 1
            sock.close()
            return None
        try:
            configure_accepted(sock)
            return format_peer(sock, addr), format_local(sock)
        except OSError:  # the peer reset before we looked at it: nothing to serve
            self._broken += 1
            sock.close()
            return None

    def _accept_failed(self, listener: Listener, exc: OSError) -> float:
        """accept() failed: count it, shed the queue on EMFILE/ENFILE (see
        ``_accept.py``), log (rate-limited); return how long to pause. Never raises:
        no accept error ends the server (see ``_isolation.py``)."""
        self._accept_errors += 1
        pause = accept_error_pause(exc)
        if pause == 0:  # one queued connection died before we took it: next one
            logger.debug("accept on %s: %s; retrying", listener.address, exc.strerror)
            return pause
        shed = 0
        if exc.errno in (errno.EMFILE, errno.ENFILE) and self._reserve is not None:
            shed = self._reserve.shed(listener.sock)
            self._shed += shed
        what = "out of resources" if exc.errno in RESOURCE_ERRNOS else "unexpected error"
        logger.warning(
            "accept on %s: %s (%s); closed %d queued connection(s), pausing %g s",
            listener.address,
            exc.strerror or exc,
            what,
            shed,
            pause,
            extra=rate_limited("accept_error"),
        )
        return pause

    def _track(self, conn: ConnectionRecord) -> None:
        """Give ``conn`` its id and count it live."""
        self._next_id += 1
        conn.id = self._next_id
        conn.draining = self._state == "draining"
        self._live[conn.id] = conn
        if len(self._live) > self._peak:
            self._peak = len(self._live)

    def _untrack(self, conn: ConnectionRecord) -> None:
        """``conn`` has ended: count it, free its slot, wake the drain when all are done."""
        del self._live[conn.id]
        self._completed += 1
        self._closed_bytes_in += conn.bytes_received
        self._closed_bytes_out += conn.bytes_sent
        if self._slot_freed is not None:
            self._slot_freed.set()
            self._slot_freed = None
        if self._all_done is not None and not self._live:
            self._all_done.set()

    def _count_broken(self, conn: ConnectionRecord, exc: BaseException) -> None:
        """The peer went away or a timeout fired (already counted by the keeper)."""
        if not isinstance(exc, ConnectionTimeout) and conn.timed_out is None:
            self._broken += 1
        logger.debug("connection %d from %s ended: %s", conn.id, conn.peer, exc)

    def _count_failure(
        self, conn: ConnectionRecord, exc: BaseException, raised: BaseException | None = None
    ) -> None:
        """The handler (or protocol) raised ``exc``: count and log it with the peer, or
        re-raise ``raised`` (default ``exc``) with ``handler_errors="raise"``."""
        self._handler_errors += 1
        if self.config.handler_errors == "raise":
            raise raised or exc
        logger.error(
            "handler error on connection %d from %s",
            conn.id,
            conn.peer,
            exc_info=exc,
            extra=rate_limited("handler_error"),
        )


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
    check_backend(config, handler)
    server = Server(handler, config)
    server._listeners = open_listeners(
        config.bind_specs,
        backlog=config.backlog,
        unix_mode=config.unix_mode,
        reuse_port=config.reuse_port,
    )
    server.addresses = [listener.address for listener in server._listeners]
    if config.warn_blocking is None:
        await server._run(task_status)
        return
    server._blocking = BlockingDetector(config.warn_blocking)
    trio.lowlevel.add_instrument(server._blocking)
    try:
        await server._run(task_status)
    finally:
        trio.lowlevel.remove_instrument(server._blocking)
