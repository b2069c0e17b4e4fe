"""The chaos client's sockets: connect, tell how a connection ended (the reset: lowlevel).

chaos/ attacks any TCP server, so it speaks plain trio sockets and never imports the
server's modules. It needs socket options the server never sets on its own side
(SO_LINGER 0 to send a reset, a small SO_RCVBUF to be a convincingly slow reader);
they live here, the one module of chaos/ that calls setsockopt.
"""

from __future__ import annotations

import array
import errno
import fcntl
import socket
import termios

import trio

from ._config import Target

CONNECT_TIMEOUT = 2.0
# SO_LINGER on with a zero timeout: close() sends RST and drops unsent data.


async def open_socket(
    target: Target, *, rcvbuf: int | None = None, timeout: float = CONNECT_TIMEOUT
) -> trio.socket.SocketType:
    """Connect a new trio socket to ``target``; the caller closes it.

    ``rcvbuf`` shrinks the receive buffer before connecting (so the window is small
    from the first segment). Raises ``trio.TooSlowError`` after ``timeout`` seconds,
    ``OSError`` when the connect fails.
    """
    sock = trio.socket.socket(target.family, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with trio.fail_after(timeout):
            await sock.connect(target.sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_stream(target: Target, *, timeout: float = CONNECT_TIMEOUT) -> trio.SocketStream:
    """:func:`open_socket` wrapped in a ``trio.SocketStream`` (the caller closes it)."""
    return trio.SocketStream(await open_socket(target, timeout=timeout))


def pending_error(sock: trio.socket.SocketType) -> int:
    """The socket's pending error (``ECONNRESET`` after a reset), 0 if none; no read."""
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))


def queued_bytes(sock: trio.socket.SocketType) -> int:
    """Bytes the server sent that wait unread in our receive queue (FIONREAD)."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


def describe(exc: BaseException) -> str:
    """A short name for how an operation failed: ``reset``, ``refused``, ``timeout``..."""
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        return describe(exc.__cause__)
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


async def send_quietly(sock: trio.socket.SocketType, data: bytes) -> str | None:
    """Send all of ``data``; return None, or how the connection broke (``describe``)."""
    view = memoryview(data)
    try:
        while view:
            sent = await sock.send(view)
            view = view[sent:]
    except OSError as exc:
        return describe(exc)
    return None
