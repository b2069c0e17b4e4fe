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
from .._isolation import cancelled_from_above, is_handler_failure
from ._base import AcceptingBackend

logger = logging.getLogger("triosrv")


class TrioBackend(AcceptingBackend):
    """Task per connection on trio streams; see the module docstring."""

    name = "trio"

    def serve_socket(self, sock: socket.socket, peer: str, local: str) -> None:
        """Wrap ``sock`` in a Connection and start its task."""
        preamble = self.host.preamble
        open_connection = preamble.open_connection if preamble else SocketConnection
        recv_size = self.host.config.limits.recv_size
        self.start_connection(open_connection(sock, peer=peer, local=local, recv_size=recv_size))

    def start_connection(self, conn: Connection) -> None:
        """Track ``conn`` and run the handler on it in a task of its own."""
        # conn.cancel_scope exists before the task runs: a timeout the keeper fires in
        # between (the loop stalled past ``lifetime``) cancels it, and trio remembers.
        self.host.track(conn)
        self._conn_nursery.start_soon(
            self._run_connection, conn, name=f"triosrv connection {conn.id} from {conn.peer}"
        )

    # KI protection: a real Ctrl-C is delivered to the main task (trio's default
    # for its own code), never raised inside a handler, where the isolation rule would
    # count it as that handler's error (_isolation.py).
    @trio.lowlevel.enable_ki_protection
    async def _run_connection(self, conn: Connection) -> None:
        preamble = self.host.preamble
        try:
            with conn.cancel_scope:
                conn.task = trio.lowlevel.current_task()
                if preamble is None or await preamble.run(conn):
                    await self._call_handler(conn)
        finally:
            self.host.untrack(conn)
            await trio.aclose_forcefully(conn)

    async def _call_handler(self, conn: Connection) -> None:
        try:
            await self.handler(conn)
        except (ConnectionTimeout, trio.BrokenResourceError) as exc:
            self.host.count_broken(conn, exc)
        except BaseExceptionGroup as group:
            # A handler with a nursery of its own: a timeout in one of its tasks comes
            # out grouped with its siblings' Cancelled. The Cancelled belongs to a scope
            # above us (the connection's, or the server's) and goes on up; the rest is
            # sorted like an ungrouped exception.
            cancelled, rest = group.split(trio.Cancelled)
            if cancelled is not None and not cancelled_from_above():
                # No scope around us is cancelled: the handler made these Cancelled
                # itself, and nothing above would catch them (_isolation.py).
                cancelled, rest = None, group
            if rest is not None:
                expected, unexpected = rest.split((ConnectionTimeout, trio.BrokenResourceError))
                if unexpected is None:
                    self.host.count_broken(conn, expected or rest)
                else:
                    self.host.count_failure(conn, unexpected, rest)
            if cancelled is not None:
                raise cancelled from None
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt, GeneratorExit raised by a handler end its
            # connection like any other error; Cancelled belongs to a scope above.
            if not is_handler_failure(exc):
                raise
            self.host.count_failure(conn, exc, exc)
