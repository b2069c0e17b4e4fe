"""Raw fd waits, and the one way to close an fd that a task may be waiting on.

These are trio's own I/O-manager primitives, re-documented with the rules a caller must
keep, so that the backends built on raw fds (``trio-fd``, the ``epoll`` loop) and the
people reading them have them in one place:

* **One waiter per direction.** trio lets one task at a time wait for an fd to become
  readable, and one to become writable. A second waiter in the same direction gets
  :exc:`trio.BusyResourceError` at once. A reader and a writer may wait together.
* **Close through notify_closing.** Closing an fd while a task waits on it would leave
  that task asleep on an fd number the kernel may hand out again at once, to a socket
  the task knows nothing about (trio#661, #3520). :func:`close_fd` calls
  :func:`notify_closing` first, which wakes every waiter with
  :exc:`trio.ClosedResourceError`, and only then closes.
* **Level, not edge.** A wait returns when the fd *is* ready; the caller then tries the
  syscall, and must expect ``BlockingIOError`` anyway (another process, a spurious wake).
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Protocol, TypeAlias

import trio


class HasFileno(Protocol):
    """Anything with a ``fileno()`` method: sockets, files, selectors."""

    def fileno(self) -> int: ...


FdLike: TypeAlias = "int | HasFileno"


async def wait_readable(fd: FdLike) -> None:
    """Block until ``fd`` is readable (or at EOF, or has an error pending).

    One task at a time may wait for an fd to become readable: a second one gets
    :exc:`trio.BusyResourceError`. If the fd is closed with :func:`close_fd` (or
    :func:`notify_closing`) meanwhile, raises :exc:`trio.ClosedResourceError`. A trio
    checkpoint: cancelling it raises :exc:`trio.Cancelled` and leaves the fd as it was.
    """
    await trio.lowlevel.wait_readable(fd)


async def wait_writable(fd: FdLike) -> None:
    """Block until ``fd`` is writable (or has an error pending).

    The same rules as :func:`wait_readable`, for the writing direction: one waiter at a
    time, :exc:`trio.ClosedResourceError` on close, cancellable.
    """
    await trio.lowlevel.wait_writable(fd)


def notify_closing(fd: FdLike) -> None:
    """Wake every task waiting on ``fd`` with :exc:`trio.ClosedResourceError`.

    Call it just before closing ``fd`` (or use :func:`close_fd`, which does both). It
    does not close anything itself and is cheap when nobody waits. Must be called from
    the trio thread.
    """
    trio.lowlevel.notify_closing(fd)


def close_fd(fd: int | socket.socket) -> None:
    """Close an fd or a socket, waking its waiters first (see :func:`notify_closing`).

    An int is closed with :func:`os.close`, a socket with its ``close()`` (so Python's
    socket object knows it is closed). Closing a socket that is already closed does
    nothing. Must be called from the trio thread.
    """
    if isinstance(fd, socket.socket):
        if fd.fileno() == -1:
            return
        trio.lowlevel.notify_closing(fd)
        fd.close()
    else:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


_LINGER_RESET = struct.pack("ii", 1, 0)


def close_with_reset(sock: trio.socket.SocketType) -> None:
    """Close ``sock`` with a TCP reset instead of a FIN (SO_LINGER 0); a closed socket
    is left alone. For clients that abort on purpose (the chaos attacks, FaultyStream);
    nothing of the server uses it."""
    if sock.fileno() != -1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()
