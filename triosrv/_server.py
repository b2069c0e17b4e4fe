"""serve() and Server: the nursery tree, admission, drain, statistics.

The tree (DESIGN.md), as the default ``trio`` backend fills it::

    serve()                               server scope: cancelling it is a hard stop
     +- connection nursery                one task per connection, owns its fd
     |   +- deadline keeper               fires idle/write/lifetime timeouts
     |   +- connection task ...           runs the handler in the connection's scope
     +- listener nursery                  one accept loop per listening socket

The Server owns what every design shares: the state machine, its listeners (bound
when it starts), drain and statistics; its :class:`~triosrv._host.ServerHost` keeps
admission, the counters, the live-connection table and the deadline keeper. A backend
(``_backends/``, chosen by ``ServerConfig.backend``) accepts and serves, and reaches
the server only through that host's public methods (the ``BackendHost`` protocol). The loop
backends put one task in the connection nursery instead of one per connection; the
``blocking`` backend's connection tasks each wait for a thread.

Shutdown has three bounded steps: the listener nursery is cancelled (and the backend
told to stop watching the listeners) and the listening sockets closed, so the kernel
refuses newcomers at once; running connections are told (``conn.draining``) and get
``grace`` seconds; then the connection nursery is cancelled.
"""

from __future__ import annotations

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
from ._errors import TIMEOUT_KINDS
from ._handlers import Handler as Handler  # re-exported: tests and tools import it here
from ._host import ServerHost
from ._isolation import LOG_LIMIT
from ._listeners import Listener, open_listeners
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
        #: Where it listens (``tcp://HOST:PORT``, ``unix:PATH``), once started.
        self.addresses: list[str] = []
        self._listeners: list[Listener] = []
        self._host = ServerHost(config, self._listeners)
        self._state: Literal["starting", "serving", "draining", "closed"] = "starting"
        self._blocking: BlockingDetector | None = None
        self._closed = trio.Event()
        self._grace = config.timeouts.grace
        self._listen_scope: trio.CancelScope | None = None
        self._drain_scope: trio.CancelScope | None = None
        self._conn_nursery: trio.Nursery | None = None
        self._backend = make_backend(self._host, handler)

    # -- public -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"starting"``, ``"serving"``, ``"draining"`` or ``"closed"``."""
        return self._state

    @property
    def listening_sockets(self) -> list[socket.socket]:
        """Its listening sockets, in the order of ``config.binds`` (a new list).

        The server owns them: it binds them when it starts and closes them when it
        stops listening. Read them (``getsockname()``, ``fileno()``), don't close them.
        """
        return [listener.sock for listener in self._listeners]

    @property
    def grace(self) -> float | None:
        """The drain's grace in seconds (None: no limit): ``Timeouts.grace``, or what
        :meth:`shutdown` set."""
        return self._grace

    def statistics(self) -> ServerStatistics:
        """A frozen snapshot of the counters; cheap enough to call often."""
        host = self._host
        live = host.live.values()
        return ServerStatistics(
            state=self._state,
            active=len(live),
            peak_active=host.peak,
            accepted=host.accepted,
            rejected=host.rejected,
            completed=host.completed,
            handler_errors=host.handler_errors,
            broken=host.broken,
            timeouts={kind: host.keeper.fired[kind] for kind in TIMEOUT_KINDS},
            bytes_received=host.closed_bytes_received + sum(c.bytes_received for c in live),
            bytes_sent=host.closed_bytes_sent + sum(c.bytes_sent for c in live),
            accept_errors=host.accept_errors,
            shed=host.shed,
            handshake_failures=dict(host.preamble.failures) if host.preamble else {},
            blocking_warnings=self._blocking.count if self._blocking else 0,
            backend=self.config.backend,
            refused_fd_setsize=host.refused_fd_setsize,
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
        return list(self._host.live.values())

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
            self._host.start_draining()
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
            await self._host.wait_for_slot()
            if self._state not in ("serving", "starting"):  # shut down while we waited
                await trio.aclose_forcefully(stream)
                raise trio.ClosedResourceError("server is not serving")
        elif self._host.is_full():
            self._host.rejected += 1
            await trio.aclose_forcefully(stream)
            return None
        conn = StreamConnection(
            stream, peer=peer, local=local, recv_size=self.config.limits.recv_size
        )
        backend.start_connection(conn)
        return conn

    # -- the tree -------------------------------------------------------------------

    async def _run(self, task_status: trio.TaskStatus[Server]) -> None:
        # Bind first: a BindError is raised before started(), with nothing to undo.
        config = self.config
        self._listeners.extend(
            open_listeners(
                config.bind_specs,
                backlog=config.backlog,
                unix_mode=config.unix_mode,
                reuse_port=config.reuse_port,
            )
        )
        self.addresses = [listener.address for listener in self._listeners]
        if config.warn_blocking is None:
            await self._serve(task_status)
            return
        self._blocking = BlockingDetector(config.warn_blocking)
        trio.lowlevel.add_instrument(self._blocking)
        try:
            await self._serve(task_status)
        finally:
            trio.lowlevel.remove_instrument(self._blocking)

    async def _serve(self, task_status: trio.TaskStatus[Server]) -> None:
        host = self._host
        try:
            host.reserve = FdReserve()
            async with trio.open_nursery() as conn_nursery:
                self._conn_nursery = conn_nursery
                conn_nursery.start_soon(host.keeper.run, name="triosrv deadline keeper")
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
            if host.reserve is not None:
                host.reserve.close()
            LOG_LIMIT.flush()  # what the log left out says so before we are gone
            self._state = "closed"
            self._closed.set()

    async def _drain(self) -> None:
        self._state = "draining"
        host = self._host
        host.start_draining()
        grace = math.inf if self._grace is None else self._grace
        at_start = len(host.live)
        with trio.move_on_after(grace) as self._drain_scope:
            await host.wait_all_closed()
        cancelled = len(host.live)
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
    # The one call into a Server's privates from outside its methods: running it is
    # not public API (a Server is built and run by serve() only).
    await Server(handler, config)._run(task_status)
