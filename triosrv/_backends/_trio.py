"""The ``trio`` backend (the default): a task per connection, the handler on a stream.

Each accepted socket becomes a :class:`~triosrv.SocketConnection` (or, with TLS/PROXY
configured, whatever the preamble opens) and gets its own task in the server's
connection nursery. The task runs the handler inside the connection's cancel scope,
which the deadline keeper cancels when a timeout is due. This is the only backend that
runs arbitrary async handlers; the others drive sans-IO protocols themselves.
"""

from __future__ import annotations

import logging
import socket

import trio

from .._connection import Connection, SocketConnection
from .._errors import ConnectionTimeout
from ._base import AcceptingBackend

logger = logging.getLogger("triosrv")


class TrioBackend(AcceptingBackend):
    """Task per connection on trio streams; see the module docstring."""

    name = "trio"

    def serve_socket(self, sock: socket.socket, peer: str, local: str) -> None:
        """Wrap ``sock`` in a Connection and start its task."""
        preamble = self.server._preamble
        open_connection = preamble.open_connection if preamble else SocketConnection
        recv_size = self.server.config.limits.recv_size
        self.start_connection(open_connection(sock, peer=peer, local=local, recv_size=recv_size))

    def start_connection(self, conn: Connection) -> None:
        """Track ``conn`` and run the handler on it in a task of its own."""
        self.server._track(conn)
        self._conn_nursery.start_soon(
            self._run_connection, conn, name=f"triosrv connection {conn.id} from {conn.peer}"
        )

    async def _run_connection(self, conn: Connection) -> None:
        preamble = self.server._preamble
        try:
            with trio.CancelScope() as conn._cancel_scope:
                conn.task = trio.lowlevel.current_task()
                if preamble is None or await preamble.run(conn):
                    await self._call_handler(conn)
        finally:
            self.server._untrack(conn)
            await conn._aclose_forcefully()

    async def _call_handler(self, conn: Connection) -> None:
        try:
            await self.handler(conn)
        except (ConnectionTimeout, trio.BrokenResourceError) as exc:
            self.server._count_broken(conn, exc)
        except Exception as exc:
            expected, unexpected = _split_expected(exc)
            if unexpected is None:
                self.server._count_broken(conn, expected or exc)
                return
            self.server._count_failure(conn, unexpected, exc)


def _split_expected(exc: Exception) -> tuple[BaseException | None, BaseException | None]:
    """Split a handler's exception group into peer/timeout endings and real errors."""
    if not isinstance(exc, BaseExceptionGroup):
        return None, exc
    return exc.split((ConnectionTimeout, trio.BrokenResourceError))
