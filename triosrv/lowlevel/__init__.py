"""Raw fds under trio: waits, safe closing, the three multiplexers, the classic loop.

* :func:`wait_readable`, :func:`wait_writable`, :func:`notify_closing`,
  :func:`close_fd` -- trio's I/O-manager primitives and the one way to close an fd a
  task may be waiting on.
* :class:`SelectMultiplexer`, :class:`PollMultiplexer`, :class:`EpollMultiplexer` --
  one interface (:class:`Multiplexer`) over the three system calls, each really made;
  :class:`NonblockingMultiplexer` is the non-multiplexer of the ``nonblocking``
  (busy-polling) design (``TryEveryFd``, its former name, still imports).
* :class:`EventLoop` -- the single-task server loop the ``epoll``, ``poll``,
  ``select`` and ``nonblocking`` backends run.
* :func:`run_sync_interruptible` -- a blocking call in a worker thread that
  cancellation interrupts and always joins.
"""

from __future__ import annotations

from ._fd import close_fd, notify_closing, wait_readable, wait_writable
from ._loop import EventLoop, LoopConnection, LoopHost
from ._multiplexers import (
    ERRORS,
    FD_SETSIZE,
    PEER_CLOSED,
    READABLE,
    WRITABLE,
    EpollMultiplexer,
    Multiplexer,
    PollMultiplexer,
    SelectMultiplexer,
)
from ._nonblocking import NonblockingMultiplexer, TryEveryFd
from ._record import NOT_WAITING, RECEIVING, SENDING, ConnectionRecord
from ._threads import run_sync_interruptible

__all__ = [
    "ERRORS",
    "FD_SETSIZE",
    "NOT_WAITING",
    "PEER_CLOSED",
    "READABLE",
    "RECEIVING",
    "SENDING",
    "WRITABLE",
    "ConnectionRecord",
    "EpollMultiplexer",
    "EventLoop",
    "LoopConnection",
    "LoopHost",
    "Multiplexer",
    "NonblockingMultiplexer",
    "PollMultiplexer",
    "SelectMultiplexer",
    "TryEveryFd",
    "close_fd",
    "notify_closing",
    "run_sync_interruptible",
    "wait_readable",
    "wait_writable",
]
