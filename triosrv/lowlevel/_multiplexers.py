"""select, poll and epoll behind one interface, each honest about what it calls.

Theory of operation
-------------------

A multiplexer watches a set of fds, each for :data:`READABLE` or :data:`WRITABLE`, and
its :meth:`~Multiplexer.wait` returns the ones that are ready as ``(fd, events)`` pairs.
The event bits are poll's and epoll's own (they agree on Linux: IN = 1, OUT = 4, ERR = 8,
HUP = 16), so the epoll and poll results reach the caller without a conversion; an
error or hang-up may be reported whatever was asked for (:data:`ERRORS`).

The point of three of them is to show the three system calls, so each really makes its
own:

* :class:`EpollMultiplexer` keeps a kernel epoll set. Its fd becomes readable when any
  fd in the set is ready, so a wait is: let trio's own I/O manager wait for *that one
  fd* (``wait_readable(epoll_fd)``, a plain trio checkpoint), then collect the ready fds
  with ``epoll_wait(epoll_fd, timeout=0)``. Cancellation is trio's.
* :class:`PollMultiplexer` and :class:`SelectMultiplexer` call ``poll()`` and
  ``select()`` with every watched fd on each wait. First with a zero timeout in the trio
  thread (under load something is nearly always ready, and no thread is needed); when
  nothing is, the blocking call runs in a worker thread
  (:func:`~triosrv.lowlevel.run_sync_interruptible`). Every call also watches a private
  wake-up fd (an eventfd; a pipe where there is none, as on macOS and the BSDs):
  cancelling the wait writes to it, the syscall returns, the thread is joined, then
  ``Cancelled`` is raised -- in well under a millisecond.

``select()`` cannot watch an fd numbered at or above ``FD_SETSIZE`` (1024);
:meth:`SelectMultiplexer.register` refuses one with a ``ValueError`` instead of letting
the next ``select()`` fail for every fd. :attr:`Multiplexer.fd_limit` says so in advance.

:meth:`~Multiplexer.wakeup` makes the current (or next) wait return early, possibly with
nothing ready. It is for other *trio tasks* (a deadline keeper, a shutdown); it is not
thread-safe and need not be, since the worker thread only ever sits in the syscall.

Counters for the curious (and the honesty tests): ``calls`` is how many times the
multiplexing syscall ran, ``last_watched`` how many fds the latest call watched (the
wake-up fd included).
"""

from __future__ import annotations

import abc
import math
import os
import select
import sys
from typing import ClassVar

import trio

from ._threads import run_sync_interruptible

__all__ = [
    "ERRORS",
    "FD_SETSIZE",
    "PEER_CLOSED",
    "READABLE",
    "WRITABLE",
    "EpollMultiplexer",
    "Multiplexer",
    "PollMultiplexer",
    "SelectMultiplexer",
]

# poll()'s bits have these numbers on Linux, macOS and the BSDs; the defaults only keep
# this module importable where the select module has no poll at all. POLLRDHUP is
# Linux's (macOS has none): there only a hang-up says the peer is gone.
READABLE: int = getattr(select, "POLLIN", 0x001)
"""Wait for bytes (or EOF, or an incoming connection on a listening socket)."""
WRITABLE: int = getattr(select, "POLLOUT", 0x004)
"""Wait for room in the send buffer."""
ERRORS: int = (
    getattr(select, "POLLERR", 0x008)
    | getattr(select, "POLLHUP", 0x010)
    | getattr(select, "POLLNVAL", 0x020)
)
"""Bits a wait may report for any watched fd: an error, a hang-up, a closed fd."""
PEER_CLOSED: int = getattr(select, "POLLRDHUP", 0) | getattr(select, "POLLHUP", 0x010)
"""Bits that come with READABLE once the peer has shut down its side: an EOF waits
behind whatever bytes are left. An edge-triggered epoll asks for them (EPOLLRDHUP)."""
FD_SETSIZE = 1024
"""select()'s limit: it cannot watch an fd numbered FD_SETSIZE or more."""

Ready = list[tuple[int, int]]


class Multiplexer(abc.ABC):
    """Watches fds for readiness; one interface over select, poll and epoll.

    The owner registers each fd once, for :data:`READABLE` or :data:`WRITABLE` (or
    both), changes that with :meth:`modify`, :meth:`unregister` s it *before* closing
    the fd, and calls :meth:`close` at the end. One task at a time may :meth:`wait`.
    """

    #: The system call, as ``strace`` shows it.
    name: ClassVar[str]
    #: fds numbered this or higher cannot be watched (None: no limit but RLIMIT_NOFILE).
    fd_limit: ClassVar[int | None] = None
    #: False: an fd is reported by every wait while it is ready (level-triggered). True:
    #: once each time it *becomes* ready (new bytes, new room, a new connection), and
    #: again after :meth:`modify`, if ready then. The owner must then go on until the
    #: syscall would block, or come back to the fd by itself. Only epoll can be.
    edge_triggered = False

    def __init__(self, *, wake_fd: bool = True) -> None:
        self.calls = 0
        self.last_watched = 0
        self._interest: dict[int, int] = {}
        self._woken = False
        self._closed = False
        # -1 for a subclass that never blocks in a syscall and needs no wake-up fd.
        # _wake_fd is the end the syscall watches, _wake_write_fd the end wakeup() writes.
        self._wake_fd, self._wake_write_fd = _open_wakeup() if wake_fd else (-1, -1)

    def __len__(self) -> int:
        """How many fds are registered (the private wake-up fd not counted)."""
        return len(self._interest)

    def __contains__(self, fd: object) -> bool:
        return fd in self._interest

    def register(self, fd: int, events: int) -> None:
        """Start watching ``fd`` for ``events`` (READABLE, WRITABLE or both).

        Raises KeyError if ``fd`` is already registered, ValueError if this
        multiplexer cannot watch it (see :attr:`fd_limit`).
        """
        if fd in self._interest:
            raise KeyError(f"fd {fd} is already registered")
        self._register(fd, events)
        self._interest[fd] = events

    def modify(self, fd: int, events: int) -> None:
        """Watch the registered ``fd`` for ``events`` instead. KeyError if unknown."""
        if fd not in self._interest:
            raise KeyError(f"fd {fd} is not registered")
        self._modify(fd, events)
        self._interest[fd] = events

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``; call it before closing the fd. KeyError if unknown."""
        del self._interest[fd]
        self._unregister(fd)

    @abc.abstractmethod
    async def wait(self, timeout: float | None = None) -> Ready:
        """Wait until some watched fd is ready, ``timeout`` seconds pass, or
        :meth:`wakeup` is called; return the ready ``(fd, events)`` pairs.

        The list may be empty (timeout, wake-up). An fd may appear once per event
        kind. A trio checkpoint; cancellation returns promptly and leaves no thread.
        """

    @abc.abstractmethod
    def poll_now(self) -> Ready:
        """The fds ready right now, without blocking and without a trio checkpoint.

        For a caller that has just handled a batch and wants the next one before it
        yields to trio; it must still :meth:`wait` (a checkpoint) every few batches.
        """

    def _drop_wakeup(self, ready: Ready) -> Ready:
        # After wakeup(): reset the wake-up fd and keep it out of the caller's list.
        self._consume_wakeup()
        wake_fd = self._wake_fd
        return [pair for pair in ready if pair[0] != wake_fd]

    def wakeup(self) -> None:
        """Make the current or next :meth:`wait` return soon (from a trio task)."""
        if not self._woken:
            self._woken = True
            os.write(self._wake_write_fd, _WAKE_BYTES)  # an eventfd adds 1 to its counter

    def _consume_wakeup(self) -> None:
        self._woken = False
        try:
            # One read empties either kind: an eventfd's counter, or the pipe, which
            # holds at most one wake-up's byte (_woken guards the writes).
            os.read(self._wake_fd, 8)
        except BlockingIOError:
            pass  # already read: nothing was pending

    def close(self) -> None:
        """Release the kernel objects (idempotent). Registered fds stay open."""
        if self._closed:
            return
        self._closed = True
        self._close()
        if self._wake_fd != -1:
            os.close(self._wake_fd)
        if self._wake_write_fd not in (-1, self._wake_fd):
            os.close(self._wake_write_fd)

    def _close(self) -> None:  # noqa: B027 - only epoll holds a kernel object
        pass

    @abc.abstractmethod
    def _register(self, fd: int, events: int) -> None: ...

    @abc.abstractmethod
    def _modify(self, fd: int, events: int) -> None: ...

    @abc.abstractmethod
    def _unregister(self, fd: int) -> None: ...


class EpollMultiplexer(Multiplexer):
    """``epoll``: the kernel keeps the set; trio waits for the epoll fd itself.

    ``edge_triggered=True`` registers every fd with ``EPOLLET`` (see
    :attr:`Multiplexer.edge_triggered`), and asks for ``EPOLLRDHUP`` with READABLE:
    a read that returns the last bytes before the peer's EOF leaves the EOF behind
    with no new edge to come, and :data:`PEER_CLOSED` in the reported events says
    so. The private wake-up fd stays level-triggered.

    Nested epoll: trio waits for our epoll fd in its own epoll set, and keeps it
    there (disabled) after the wait. While it is there, every event on any fd of
    ours also wakes that entry, a ~100 ns detour paid by whoever made the fd ready
    (the peer's CPU, on loopback). So once a wait finds the loop busy, our fd leaves
    trio's set (``notify_closing``: no task waits on it then), and the next trio
    wait adds it back; a loop that goes to sleep on every wait never leaves.
    """

    name = "epoll_wait"

    def __init__(self, *, edge_triggered: bool = False) -> None:
        super().__init__()
        self.edge_triggered = edge_triggered
        self._epoll = select.epoll()
        self._epoll_fd = self._epoll.fileno()
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        self._poll = self._epoll.poll
        self.last_watched = 1
        self._in_trio_set = False  # trio's epoll set holds our fd (see the docstring)

    def _register(self, fd: int, events: int) -> None:
        self._epoll.register(fd, self._kernel_events(events))

    def _modify(self, fd: int, events: int) -> None:
        # With EPOLLET this also re-arms: an fd already ready for the new events is
        # reported by the next wait.
        self._epoll.modify(fd, self._kernel_events(events))

    def _kernel_events(self, events: int) -> int:
        if not self.edge_triggered:
            return events
        if events & READABLE:
            events |= select.EPOLLRDHUP
        return events | select.EPOLLET

    def _unregister(self, fd: int) -> None:
        self._epoll.unregister(fd)

    async def wait(self, timeout: float | None = None) -> Ready:
        """See :meth:`Multiplexer.wait`; ``epoll_wait(fd, 0)``, and when nothing is
        ready a trio wait for the epoll fd and ``epoll_wait(fd, 0)`` again."""
        self.calls += 1
        ready = self._poll(0)
        if ready or timeout == 0:
            # Busy: skip the trio wait (an epoll_ctl to re-arm our fd in trio's set
            # plus a wake-up); a plain checkpoint keeps us cancellable and fair.
            if self._in_trio_set:
                self._leave_trio_set()
            await trio.lowlevel.checkpoint()
        else:
            self._in_trio_set = True
            # trio.lowlevel's function itself, not our documented wrapper: this is
            # the hot path of the fastest backend, and a wrapper is one more frame.
            if timeout is None:
                await trio.lowlevel.wait_readable(self._epoll_fd)
            else:
                with trio.move_on_after(timeout):
                    await trio.lowlevel.wait_readable(self._epoll_fd)
            self.calls += 1
            ready = self._poll(0)
        return self._drop_wakeup(ready) if self._woken else ready

    def _leave_trio_set(self) -> None:
        # No task waits on our fd now (this task is the only one that does), so
        # notify_closing wakes nobody: it only takes the fd out of trio's epoll set.
        self._in_trio_set = False
        trio.lowlevel.notify_closing(self._epoll_fd)

    def poll_now(self) -> Ready:
        """See :meth:`Multiplexer.poll_now`: ``epoll_wait(fd, 0)``."""
        self.calls += 1
        ready = self._poll(0)
        return self._drop_wakeup(ready) if self._woken else ready

    def _close(self) -> None:
        if trio.lowlevel.in_trio_run():
            trio.lowlevel.notify_closing(self._epoll_fd)
        self._epoll.close()

    def register(self, fd: int, events: int) -> None:
        """See :meth:`Multiplexer.register`."""
        super().register(fd, events)
        # epoll passes no list per call: what it watches is the kernel's set.
        self.last_watched = len(self._interest) + 1

    def unregister(self, fd: int) -> None:
        """See :meth:`Multiplexer.unregister`."""
        super().unregister(fd)
        self.last_watched = len(self._interest) + 1


# eventfd's write is an 8-byte native-endian counter increment; a pipe takes the same bytes.
_WAKE_BYTES = (1).to_bytes(8, sys.byteorder)


def _open_wakeup() -> tuple[int, int]:
    """A non-blocking close-on-exec wake-up channel: (the fd to watch, the fd to write).

    An eventfd (one fd, Linux) where there is one, else a pipe (POSIX): the portable
    shape Twisted and libuv use on macOS and the BSDs.
    """
    if hasattr(os, "eventfd"):
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return fd, fd
    read_fd, write_fd = os.pipe()  # non-inheritable (PEP 446)
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    return read_fd, write_fd


class _ThreadedMultiplexer(Multiplexer):
    """A multiplexer whose blocking call runs in a worker thread (select, poll)."""

    async def wait(self, timeout: float | None = None) -> Ready:
        """See :meth:`Multiplexer.wait`; a zero-timeout call first, then a thread."""
        await trio.lowlevel.checkpoint()
        ready = self._call(0.0)
        if not ready and timeout != 0:
            ready = await run_sync_interruptible(
                lambda: self._call(timeout), self.wakeup, name=f"triosrv {self.name}()"
            )
        return self._drop_wakeup(ready) if self._woken else ready

    def poll_now(self) -> Ready:
        """See :meth:`Multiplexer.poll_now`: the syscall with a zero timeout."""
        ready = self._call(0.0)
        return self._drop_wakeup(ready) if self._woken else ready

    @abc.abstractmethod
    def _call(self, timeout: float | None) -> Ready:
        """Make the syscall (in any thread), wake-up fd included; count it."""


class PollMultiplexer(_ThreadedMultiplexer):
    """``poll()``: every watched fd is passed to the kernel on every call."""

    name = "poll"

    def __init__(self) -> None:
        super().__init__()
        self._poll = select.poll()
        self._poll.register(self._wake_fd, select.POLLIN)

    def _register(self, fd: int, events: int) -> None:
        self._poll.register(fd, events)

    def _modify(self, fd: int, events: int) -> None:
        self._poll.modify(fd, events)

    def _unregister(self, fd: int) -> None:
        self._poll.unregister(fd)

    def _call(self, timeout: float | None) -> Ready:
        self.calls += 1
        self.last_watched = len(self._interest) + 1
        return self._poll.poll(None if timeout is None else math.ceil(timeout * 1000))


class SelectMultiplexer(_ThreadedMultiplexer):
    """``select()``: three fd sets rebuilt from the lists on every call; fds < 1024."""

    name = "select"
    fd_limit = FD_SETSIZE

    def __init__(self) -> None:
        super().__init__()
        if self._wake_fd >= FD_SETSIZE:
            self.close()
            raise ValueError(f"select() needs a free fd below FD_SETSIZE ({FD_SETSIZE})")
        self._readers: list[int] = [self._wake_fd]
        self._writers: list[int] = []
        self._stale = False

    def _register(self, fd: int, events: int) -> None:
        if not 0 <= fd < FD_SETSIZE:
            raise ValueError(
                f"select() cannot watch fd {fd}: only fds below FD_SETSIZE ({FD_SETSIZE})"
            )
        self._stale = True

    def _modify(self, fd: int, events: int) -> None:
        self._stale = True

    def _unregister(self, fd: int) -> None:
        self._stale = True

    def _call(self, timeout: float | None) -> Ready:
        if self._stale:  # rebuilt lazily: a burst of changes costs one rebuild
            items = self._interest.items()
            self._readers = [self._wake_fd] + [fd for fd, ev in items if ev & READABLE]
            self._writers = [fd for fd, ev in items if ev & WRITABLE]
            self._stale = False
        readers, writers = self._readers, self._writers
        self.calls += 1
        self.last_watched = len(readers) + len(writers)
        readable, writable, _ = select.select(readers, writers, (), timeout)
        if not writable:
            return [(fd, READABLE) for fd in readable]
        return [(fd, READABLE) for fd in readable] + [(fd, WRITABLE) for fd in writable]
