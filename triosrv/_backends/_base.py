"""What a backend is to the Server, and the accept loop the task-per-connection ones share.

The :class:`~triosrv.Server` keeps everything that does not depend on the design: the
state machine, admission counters, the live-connection table, the deadline keeper,
shutdown and drain, statistics. A :class:`Backend` does the rest: it accepts on the
server's listeners and serves each connection its own way, and reports to the server
through a handful of private calls (``_admit``, ``_track``, ``_untrack``,
``_count_broken``, ``_count_failure``, ``_accept_failed``).
"""

from __future__ import annotations

import abc
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import trio

from ..lowlevel._sizes import ACCEPT_BATCH
from ..protocols import Protocol

if TYPE_CHECKING:
    from .._handlers import Handler
    from .._listeners import Listener
    from .._server import Server


class Backend(abc.ABC):
    """One server design: how a :class:`~triosrv.Server` accepts and serves."""

    #: The name ``ServerConfig.backend`` selects it by.
    name: ClassVar[str]
    #: True if :meth:`Server.shutdown` may close the listeners right after cancelling
    #: the listen nursery (nothing but trio waits on them), so that the kernel refuses
    #: newcomers before shutdown() returns.
    closes_listeners_at_once: ClassVar[bool] = False

    def __init__(self, server: Server, handler: Handler) -> None:
        self.server = server
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
        for listener in self.server._listeners:
            listen_nursery.start_soon(
                self._accept_loop, listener, name=f"triosrv listener {listener.address}"
            )

    @abc.abstractmethod
    def serve_socket(self, sock: socket.socket, peer: str, local: str) -> None:
        """Serve an admitted, configured socket (start its task in the conn nursery)."""

    async def _accept_loop(self, listener: Listener) -> None:
        server = self.server
        sock = listener.sock
        limits = server.config.limits
        wait_mode = limits.overload == "wait"
        batch = 0
        while True:
            if wait_mode and len(server._live) >= limits.max_connections:
                await server._wait_for_slot()
            try:
                conn_sock, addr = sock.accept()
            except BlockingIOError:
                batch = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if sock.fileno() == -1:
                    return  # shutdown() closed the listener while we were runnable
                await trio.sleep(server._accept_failed(listener, exc))
                continue
            names = server._admit(conn_sock, addr)
            if names is not None:
                self.serve_socket(conn_sock, *names)
            batch += 1
            if batch >= ACCEPT_BATCH:
                batch = 0
                await trio.lowlevel.checkpoint()
