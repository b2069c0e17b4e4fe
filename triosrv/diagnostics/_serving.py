"""The accept loop shared by the control and metrics endpoints.

These are small side listeners, not the server: no admission control, no deadline
keeper, just "accept, wrap in a trio stream, serve in the endpoint's nursery". Like
the server's accept loop they survive running out of fds (pause and retry) and let
every other error propagate.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

import trio

from .._accept import RESOURCE_ERRNOS
from .._listeners import format_peer

logger = logging.getLogger("triosrv")

# After an out-of-fds accept error, how long the loop rests (as the server's does).
ACCEPT_PAUSE = 0.1


async def accept_loop(
    sock: socket.socket,
    nursery: trio.Nursery,
    serve_client: Callable[[trio.SocketStream], Awaitable[None]],
    *,
    what: str,
) -> None:
    """Accept on the non-blocking listening ``sock`` until cancelled; serve each
    client with ``serve_client`` in a task of ``nursery`` named
    ``triosrv {what} client PEER``. The caller owns and closes ``sock``."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            client, addr = sock.accept()
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno not in RESOURCE_ERRNOS:
                raise
            logger.warning("%s: accept failed: %s; pausing %g s", what, exc.strerror, ACCEPT_PAUSE)
            await trio.sleep(ACCEPT_PAUSE)
            continue
        peer = format_peer(client, addr)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
        nursery.start_soon(serve_client, stream, name=f"triosrv {what} client {peer}")
