"""ServerHost: the part of a Server its backend talks to.

A :class:`~triosrv.Server` runs one backend (``_backends/``). Everything the backend
reports or asks -- admit an accepted socket, track and untrack a connection, count a
broken peer or a handler error, wait for a free slot -- goes through the public
methods of :class:`ServerHost`, which the backend knows only as the
:class:`~triosrv._backends.BackendHost` protocol. The host owns what those calls
change: the live-connection table, the admission and error counters, the deadline
keeper that watches the table, the TLS/PROXY preamble. The Server owns the rest (its
state machine, listeners, shutdown and drain) and reads the counters for
:meth:`~triosrv.Server.statistics`.

Nothing here is public API: ``ServerHost`` is reached only through a Server.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence

import trio

from ._accept import FdReserve
from ._config import ServerConfig
from ._deadlines import DeadlineKeeper
from ._errors import ConnectionTimeout
from ._isolation import RESOURCE_ERRNOS, accept_error_pause, rate_limited
from ._listeners import Listener, configure_accepted, format_local, format_peer
from ._preamble import Preamble
from .lowlevel import ConnectionRecord

logger = logging.getLogger("triosrv")


class ServerHost:
    """Admission, the live-connection table and the counters of one server.

    ``listeners`` is the server's own list (shared, filled when it binds). Implements
    :class:`~triosrv._backends.BackendHost`; see the module docstring.
    """

    def __init__(self, config: ServerConfig, listeners: Sequence[Listener]) -> None:
        self.config = config
        self.listeners = listeners
        #: The live connections by id, in id order (ids only grow).
        self.live: dict[int, ConnectionRecord] = {}
        self.keeper = DeadlineKeeper(config.timeouts, self.live)
        # TLS and PROXY run before the handler (None when neither is configured).
        self.preamble = Preamble.from_config(config, timeouts_fired=self.keeper.fired)
        #: The spare fd shed on EMFILE (see _accept.py), while the server runs.
        self.reserve: FdReserve | None = None
        #: True once the server drains: connections tracked from now on are told so.
        self.draining = False
        self.peak = self.accepted = self.rejected = self.completed = 0
        self.handler_errors = self.broken = self.accept_errors = self.shed = 0
        self.refused_fd_setsize = 0
        # What the connections that have ended received and sent.
        self.closed_bytes_received = self.closed_bytes_sent = 0
        self._next_id = 0
        self._max = config.limits.max_connections
        self._slot_freed: trio.Event | None = None
        self._all_done: trio.Event | None = None

    # -- admission -------------------------------------------------------------------

    def is_full(self) -> bool:
        """True while ``max_connections`` connections are live."""
        return len(self.live) >= self._max

    async def wait_for_slot(self) -> None:
        """Return once fewer than ``max_connections`` connections are live."""
        while len(self.live) >= self._max:
            if self._slot_freed is None:
                self._slot_freed = trio.Event()
            await self._slot_freed.wait()

    async def wait_all_closed(self) -> None:
        """Return once no connection is live (the drain waits here)."""
        while self.live:
            self._all_done = trio.Event()
            await self._all_done.wait()

    def start_draining(self) -> None:
        """Tell every live connection, and every one tracked from now on, to finish."""
        self.draining = True
        for conn in self.live.values():
            conn.draining = True

    def admit(self, sock: socket.socket, addr: object) -> tuple[str, str] | None:
        """Count an accepted socket, reject it when full (``overload="reject"``),
        configure it; return (peer, local), or None once it is closed."""
        self.accepted += 1
        if len(self.live) >= self._max:
            self.rejected += 1
            sock.close()
            return None
        try:
            configure_accepted(sock)
            return format_peer(sock, addr), format_local(sock)
        except OSError:  # the peer reset before we looked at it: nothing to serve
            self.broken += 1
            sock.close()
            return None

    def accept_failed(self, listener: Listener, exc: OSError) -> float:
        """accept() failed: count it, shed the queue on EMFILE/ENFILE (see
        ``_accept.py``), log (rate-limited); return how long to pause. Never raises:
        no accept error ends the server (see ``_isolation.py``)."""
        self.accept_errors += 1
        pause = accept_error_pause(exc)
        if pause == 0:  # one queued connection died before we took it: next one
            logger.debug("accept on %s: %s; retrying", listener.address, exc.strerror)
            return pause
        shed = 0
        if exc.errno in (errno.EMFILE, errno.ENFILE) and self.reserve is not None:
            shed = self.reserve.shed(listener.sock)
            self.shed += shed
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

    def count_refused(self) -> int:
        """Count a connection refused because select() cannot watch its fd; return
        how many so far."""
        self.refused_fd_setsize += 1
        return self.refused_fd_setsize

    # -- the live table ----------------------------------------------------------------

    def track(self, conn: ConnectionRecord) -> None:
        """Give ``conn`` its id and count it live."""
        self._next_id += 1
        conn.id = self._next_id
        conn.draining = self.draining
        self.live[conn.id] = conn
        if len(self.live) > self.peak:
            self.peak = len(self.live)

    def untrack(self, conn: ConnectionRecord) -> None:
        """``conn`` has ended: count it, free its slot, wake the drain when all are done."""
        del self.live[conn.id]
        self.completed += 1
        self.closed_bytes_received += conn.bytes_received
        self.closed_bytes_sent += conn.bytes_sent
        if self._slot_freed is not None:
            self._slot_freed.set()
            self._slot_freed = None
        if self._all_done is not None and not self.live:
            self._all_done.set()

    # -- how connections end ---------------------------------------------------------

    def count_broken(self, conn: ConnectionRecord, exc: BaseException) -> None:
        """The peer went away or a timeout fired (already counted by the keeper)."""
        if not isinstance(exc, ConnectionTimeout) and conn.timed_out is None:
            self.broken += 1
        logger.debug("connection %d from %s ended: %s", conn.id, conn.peer, exc)

    def count_failure(
        self, conn: ConnectionRecord, exc: BaseException, raised: BaseException | None = None
    ) -> None:
        """The handler (or protocol) raised ``exc``: count and log it with the peer, or
        re-raise ``raised`` (default ``exc``) with ``handler_errors="raise"``."""
        self.handler_errors += 1
        if self.config.handler_errors == "raise":
            raise raised or exc
        logger.error(
            "handler error on connection %d from %s",
            conn.id,
            conn.peer,
            exc_info=exc,
            extra=rate_limited("handler_error"),
        )
