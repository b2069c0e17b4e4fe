"""What a backend is to the Server, and the accept loop the task-per-connection ones share.

The :class:`~triosrv.Server` keeps everything that does not depend on the design: the
state machine, admission counters, the live-connection table, the deadline keeper,
shutdown and drain, statistics. A :class:`Backend` does the rest: it accepts on the
server's listeners and serves each connection its own way, and reports to the server
through :class:`BackendHost` -- a protocol of public methods, as
:class:`triosrv.lowlevel.LoopHost` is to the event loop -- so that no backend knows the
Server class (nor imports it: the server imports the backends, never the reverse).
"""

from __future__ import annotations

import abc
import socket
from collections.abc import Callable, Sequence
from typing import ClassVar
from typing import Protocol as TypingProtocol

import trio

from .._config import ServerConfig
from .._handlers import Handler
from .._listeners import Listener
from .._preamble import Preamble
from ..lowlevel import ConnectionRecord
from ..lowlevel._sizes import ACCEPT_BATCH
from ..protocols import Protocol


class BackendHost(TypingProtocol):
    """What a backend needs from the server that runs it (``triosrv._host.ServerHost``).

    Every call is per accept or per connection, never per byte.
    """

    @property
    def config(self) -> ServerConfig:
        """The server's configuration."""

    @property
    def listeners(self) -> Sequence[Listener]:
        """The listening sockets to accept on (the server owns and closes them)."""

    @property
    def preamble(self) -> Preamble | None:
        """TLS and PROXY steps to run before the handler (``trio`` backend), or None."""

    def is_full(self) -> bool:
        """True while ``max_connections`` connections are live."""

    async def wait_for_slot(self) -> None:
        """Return once a connection slot is free (``overload="wait"``)."""

    def admit(self, sock: socket.socket, addr: object) -> tuple[str, str] | None:
        """Count and configure an accepted socket; return (peer, local), or None if the
        host closed it (rejected when full, or reset before it could be looked at)."""

    def accept_failed(self, listener: Listener, exc: OSError) -> float:
        """accept() failed: count and log it; return seconds to pause (never raises)."""

    def count_refused(self) -> int:
        """Count a connection refused for its fd (select's FD_SETSIZE); return the total."""

    def track(self, conn: ConnectionRecord) -> None:
        """Start tracking a connection (the host sets its ``id``)."""

    def untrack(self, conn: ConnectionRecord) -> None:
        """The connection has ended and its fd is closed: stop tracking it."""

    def count_broken(self, conn: ConnectionRecord, exc: BaseException) -> None:
        """The peer reset or went away, or a timeout ended the connection."""

    def count_failure(
        self, conn: ConnectionRecord, exc: BaseException, raised: BaseException | None = None
    ) -> None:
        """The handler or protocol raised ``exc``: count and log it, or re-raise
        ``raised`` (default ``exc``) with ``handler_errors="raise"``."""


class Backend(abc.ABC):
    """One server design: how a :class:`~triosrv.Server` accepts and serves."""

    #: The name ``ServerConfig.backend`` selects it by.
    name: ClassVar[str]
    #: True if :meth:`Server.shutdown` may close the listeners right after cancelling
    #: the listen nursery (nothing but trio waits on them), so that the kernel refuses
    #: newcomers before shutdown() returns.
    closes_listeners_at_once: ClassVar[bool] = False

    def __init__(self, host: BackendHost, handler: Handler) -> None:
        self.host = host
        self.handler = handler

    @property
    def protocol_factory(self) -> Callable[[], Protocol]:
        """The factory of the sans-IO protocol the handler drives (see
        :func:`~triosrv.protocol_handler`); ``check_backend`` made sure there is one."""
        # getattr: the attribute is on ProtocolHandler, not on the Handler type.
        factory: Callable[[], Protocol] = getattr(self.handler, "protocol_factory")  # noqa: B009
        return factory

    @abc.abstractmethod
    async def start(self, listen_nursery: trio.Nursery, conn_nursery: trio.Nursery) -> None:
        """Start accepting on the server's listeners; return once accepting.

        Tasks that only accept go in ``listen_nursery`` (cancelled first at shutdown);
        tasks that serve connections in ``conn_nursery`` (cancelled after the drain).
        """

    async def stop_accepting(self) -> None:  # noqa: B027 - most backends need nothing
        """Called once ``listen_nursery`` is cancelled, before the listeners close:
        return when nothing watches them any more."""


class AcceptingBackend(Backend):
    """A backend with one accept task per listener and one task per connection."""

    closes_listeners_at_once = True
    _conn_nursery: trio.Nursery

    async def start(self, listen_nursery: trio.Nursery, conn_nursery: trio.Nursery) -> None:
        """Start one accept loop per listener in ``listen_nursery``."""
        self._conn_nursery = conn_nursery
        for listener in self.host.listeners:
            listen_nursery.start_soon(
                self._accept_loop, listener, name=f"triosrv listener {listener.address}"
            )

    @abc.abstractmethod
    def serve_socket(self, sock: socket.socket, peer: str, local: str) -> None:
        """Serve an admitted, configured socket (start its task in the conn nursery)."""

    async def _accept_loop(self, listener: Listener) -> None:
        host = self.host
        sock = listener.sock
        wait_mode = host.config.limits.overload == "wait"
        batch = 0
        while True:
            if wait_mode and host.is_full():
                await host.wait_for_slot()
            try:
                conn_sock, addr = sock.accept()
            except BlockingIOError:
                batch = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if sock.fileno() == -1:
                    return  # shutdown() closed the listener while we were runnable
                await trio.sleep(host.accept_failed(listener, exc))
                continue
            names = host.admit(conn_sock, addr)
            if names is not None:
                self.serve_socket(conn_sock, *names)
            batch += 1
            if batch >= ACCEPT_BATCH:
                batch = 0
                await trio.lowlevel.checkpoint()
