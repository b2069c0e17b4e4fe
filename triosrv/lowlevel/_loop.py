"""The classic single-task server loop, over any multiplexer, driving sans-IO protocols.

Theory of operation
-------------------

One trio task owns the listening sockets, every connection and the multiplexer. Each
turn of the loop is one :meth:`Multiplexer.wait` -- its only trio checkpoint -- and then
up to ``PASSES_PER_CHECKPOINT`` passes (for at most ``PASSES_TIME``), each over one
batch of ready fds, the later ones fetched with the non-blocking
:meth:`Multiplexer.poll_now`. In a pass every ready fd is handled to completion
without yielding: a listener
accepts a batch; a connection that waits for bytes does one ``read``, feeds the protocol
and runs the protocol's driver loop (see :mod:`triosrv.protocols`): send what it has,
stop when the socket is full (then wait for WRITABLE) or when the protocol has nothing
to send (then wait for READABLE again), close when it asks to.

The hot path is the round trip of a protocol with the ``answer`` fast path (see
:mod:`triosrv.protocols._base`; echo and discard have it): ``os.read``, one protocol
call, ``os.write``, back to waiting. The writes of a pass wait until its receives are
done, a slice of up to ``REPLY_BATCH`` fds at a time, and then go out one after the
other; anything that leaves the fast path sends the waiting replies first, so that
no byte overtakes another. Everything it needs is a slot of the
:class:`LoopConnection` bound at accept (``fast``: the protocol's ``answer`` while the
connection waits for bytes, else None -- the one test of the hot path), the syscalls go
through ``os`` on the fd (the ``socket`` methods parse their arguments and check
timeouts on every call: measured ~1,400 more CPU instructions per round trip), so it
allocates nothing but the received bytes, and its bookkeeping is an int add per counter
and one float store when a wait starts (for the server's deadline keeper). A chunk the
protocol does not ``answer`` goes the general way: ``receive_data`` and the driver loop.

A receive asks for ``read_size`` bytes, which follows the peer between READ_SIZE_MIN
and ``recv_size`` (see :meth:`EventLoop._resized`): ``os.read`` allocates what it asks
for before it knows what comes, and a small size comes from Python's own allocator. The
hot path pays three comparisons for it; only a change of size, a full receive or an
unusual event takes the call to ``_resized``.

Over an edge-triggered multiplexer (the epoll backend's) an fd is reported when it
becomes ready, not while it stays ready, so the loop keeps its own list, ``_again``, of
the fds it leaves ready with no new edge to come, and handles them in the next pass as
if they had been reported: a receive that filled the size it asked for (more may
wait), one that came with :data:`PEER_CLOSED` (the EOF waits behind the bytes), a send
budget spent while the socket still had room, a full accept batch. Switching a
connection between READABLE and WRITABLE re-arms the fd (``modify``), and the loop never
drops a batch it has fetched. Over a level-triggered multiplexer ``_again`` stays empty.

Everything else comes in through one flag, ``_attention``, checked once per pass: the
deadline keeper (a trio task of the server) expiring connections, a request to stop
accepting, the end of an accept pause. Those set the flag and wake the multiplexer.

What belongs to the server -- admission, counters, the log, what a failure means -- is
reached through the small :class:`LoopHost` interface, called per accept and per close,
never per event. The loop never closes a listener: it only stops watching it
(:meth:`EventLoop.stop_accepting`), and the owner closes it.

:class:`NonblockingMultiplexer` turns the same loop into the busy-polling design: each
pass tries every fd (the syscalls fail with ``BlockingIOError`` when nothing is there),
and when a whole pass moved nothing the loop sleeps ``interval`` seconds.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Protocol as TypingProtocol

import trio

from ..protocols import Answer, Protocol, answer_method
from ._fd import close_fd
from ._multiplexers import PEER_CLOSED, READABLE, WRITABLE, Multiplexer, Ready
from ._record import RECEIVING, SENDING, ConnectionRecord
from ._sizes import ACCEPT_BATCH, SEND_SIZE

# The smallest size a receive asks for, however small the chunks (see _resized): a
# bytes object of up to 256 bytes comes from Python's small-object allocator, while a
# 64 KiB receive buffer is a malloc() and realloc() in the C library -- measured ~700 of
# ~6,700 user CPU instructions of an echo round trip of 64 bytes.
READ_SIZE_MIN = 256
# Sends one connection may make in one pass before the others get their turn: a
# protocol that always has output (chargen) to a fast reader would starve them.
SEND_BUDGET = 4
# Batches of ready fds handled between two trio checkpoints. A checkpoint (a pass
# of trio's scheduler, ~5 us plus an epoll_wait of trio's own) costs about as much as
# handling a few echoes; under load the next batch is usually ready at once. Bounded
# in number and, first, in time (a batch of bulk sends takes milliseconds), so that
# cancellation, the drain's deadline and the server's other tasks never wait more
# than a few milliseconds. 16 rather than 4: 0.1 us less CPU per echo round trip at
# 50 connections (two sets of 6 and 8 alternating runs).
PASSES_PER_CHECKPOINT = 16
PASSES_TIME = 0.002
# Fds handled before the fast path's replies go out. A pass receives and answers a
# slice of ready fds first and then makes the slice's sends one after the other, so
# the peer is woken once for a burst of replies rather than once per reply (the load
# generator's voluntary context switches per 1000 round trips at 50 connections: 5-17
# against 21-29), and the same syscall runs back to back. Paired windows against
# sending each reply at once (scripts/bench_paired.py --runs 8, echo 64 B): +0.7% at
# 50 connections, +2.3% at 1000; slices of 8 and 16 were slower than 64 at 50. The
# bound keeps what waits in memory small (at most this many receives of recv_size
# bytes) and the first reply's wait short (the slice's receives and answers, a few
# microseconds each).
REPLY_BATCH = 64


class LoopHost(TypingProtocol):
    """What an :class:`EventLoop` needs from the server that owns it."""

    def should_accept(self) -> bool:
        """False while admission is full and newcomers must wait in the backlog."""

    def admit(self, sock: socket.socket, addr: object) -> tuple[str, str] | None:
        """Count and configure an accepted socket; return (peer, local), or None if the
        host closed it (rejected, or reset before it could be looked at)."""

    def opened(self, conn: ConnectionRecord) -> None:
        """Start tracking a connection (the host sets its ``id``)."""

    def closed(self, conn: ConnectionRecord) -> None:
        """The connection's fd is closed: stop tracking it."""

    def failed(self, conn: ConnectionRecord, exc: BaseException) -> None:
        """The protocol raised; count and log (may re-raise to stop the server)."""

    def broken(self, conn: ConnectionRecord, exc: OSError) -> None:
        """A socket call failed: the peer reset or went away."""

    def accept_failed(self, listener: socket.socket, exc: OSError) -> float:
        """accept() failed: count and log it; return seconds to pause (never raises)."""

    def refused(self, sock: socket.socket, fd_limit: int) -> None:
        """The multiplexer cannot watch this accepted socket's fd (select's FD_SETSIZE).
        The loop closes it afterwards."""


class LoopConnection(ConnectionRecord):
    """A connection served by an :class:`EventLoop`; see :class:`ConnectionRecord`."""

    __slots__ = (
        "_loop",
        "answer",
        "data_to_send",
        "fast",
        "fd",
        "pending",
        "protocol",
        "read_low",
        "read_size",
        "reading",
        "receive_data",
        "sock",
    )

    def __init__(
        self, loop: EventLoop, sock: socket.socket, *, peer: str, local: str, now: float
    ) -> None:
        super().__init__(peer=peer, local=local, started_at=now)
        self._loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.reading = True
        # The hot path's one test: ``answer`` while reading, else None.
        self.fast: Answer | None = None
        self.pending: bytes | memoryview = b""
        self.set_read_size(loop.recv_size)

    def attach(self, protocol: Protocol) -> None:
        """Serve ``protocol`` on this connection."""
        self.protocol = protocol
        self.receive_data = protocol.receive_data
        self.data_to_send = protocol.data_to_send
        self.answer = answer_method(protocol)
        self.fast = self.answer if self.reading else None

    def set_read_size(self, size: int) -> None:
        """Make the next receive ask for ``size`` bytes (see EventLoop._resized)."""
        self.read_size = size
        # A chunk shorter than this makes the size shrink (0: it is as small as it gets).
        self.read_low = size // 4 if size > READ_SIZE_MIN else 0

    def stop(self) -> None:
        """Have the loop close this connection at its next pass."""
        self._loop.close_soon(self)


class EventLoop:
    """Serve ``protocol_factory`` on ``listeners`` from one task, over ``mux``.

    ``await nursery.start(loop.run)`` returns once the listeners are watched. The loop
    runs until cancelled; then it closes every connection's fd and the multiplexer
    (never the listeners: the caller owns them). ``recv_size`` is the most bytes one
    receive asks for.
    """

    def __init__(
        self,
        host: LoopHost,
        mux: Multiplexer,
        listeners: Sequence[socket.socket],
        protocol_factory: Callable[[], Protocol],
        *,
        recv_size: int = 65536,
    ) -> None:
        self.host = host
        self.mux = mux
        self.listeners = {sock.fileno(): sock for sock in listeners}
        self.protocol_factory = protocol_factory
        self.recv_size = recv_size
        # What the answer fast path is told it may send: no receive is longer (the
        # protocol need not check; see triosrv.protocols._base).
        self.answer_size = max(SEND_SIZE, recv_size)
        self.conns: dict[int, LoopConnection] = {}
        #: Set once the listeners are no longer watched for good.
        self.not_accepting = trio.Event()
        self._attention = False
        self._expired: list[LoopConnection] = []
        self._stopping = False
        self._watching = False
        self._paused_until: float | None = None
        # Edge-triggered multiplexer: fds to handle in the next pass although the
        # kernel will not report them (see the class docstring).
        self._edge = mux.edge_triggered
        self._again: Ready = []

    # -- control, from other trio tasks ------------------------------------------

    def stop_accepting(self) -> None:
        """Stop watching the listeners at the next pass; ``not_accepting`` is set then."""
        self._stopping = True
        self._attention = True
        self.mux.wakeup()

    def close_soon(self, conn: LoopConnection) -> None:
        """Close ``conn`` at the next pass (from another task: a timeout fired)."""
        self._expired.append(conn)
        self._attention = True
        self.mux.wakeup()

    def progress(self) -> int:
        """A number that grows whenever bytes move or a connection comes or goes."""
        moved = sum(c.bytes_received + c.bytes_sent for c in self.conns.values())
        return moved + len(self.conns)

    # -- the loop -----------------------------------------------------------------

    # A real Ctrl-C goes to the main task, never into a protocol call, where it would
    # count as that protocol's error.
    @trio.lowlevel.enable_ki_protection
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the loop until cancelled (see the class docstring)."""
        try:
            self._update_listening(trio.current_time())
            task_status.started()
            await self._serve()
        finally:
            self._close_all()

    async def _serve(self) -> None:
        # One wait (the checkpoint), then up to PASSES_PER_CHECKPOINT passes over what
        # is ready, each later pass fetching its batch with a non-blocking poll_now().
        # Nothing fetched is ever dropped: an edge-triggered multiplexer would not
        # report it again.
        wait = self.mux.wait
        poll_now = self.mux.poll_now
        current_time = trio.lowlevel.current_clock().current_time  # trio.current_time
        handle = self._handle
        timeout: float | None = None
        while True:
            if self._attention:  # e.g. an accept pause begun in the last pass
                timeout = self._tend(current_time())
            ready: Ready = await wait(0 if self._again else timeout)
            started = current_time()
            passes = PASSES_PER_CHECKPOINT
            while True:
                if self._again:
                    ready = self._take_again(ready)
                if not ready:
                    break
                now = current_time()
                if self._attention:
                    timeout = self._tend(now)
                handle(ready, now)
                passes -= 1
                if not passes or now - started > PASSES_TIME:
                    break
                ready = poll_now()

    def _take_again(self, ready: Ready) -> Ready:
        # Add the fds the last pass left ready to the kernel's list. One may come
        # twice (it had a new edge too); the second turn finds nothing to do.
        again, self._again = self._again, []
        return ready + again

    def _handle(self, ready: Ready, now: float) -> None:
        # A pass, in slices of at most REPLY_BATCH fds: the replies of a slice wait in
        # memory until its receives are done (see _answer_slice).
        if len(ready) <= REPLY_BATCH:
            self._answer_slice(ready, now)
            return
        for start in range(0, len(ready), REPLY_BATCH):
            self._answer_slice(ready[start : start + REPLY_BATCH], now)

    def _answer_slice(self, ready: Ready, now: float) -> None:
        # The hot path is written out inside the loop: a round trip of a protocol with
        # the answer fast path costs no Python call beyond the two syscalls and
        # answer() (one more call per event measured ~5% of the epoll backend's echo
        # rate). Its replies are sent together once the slice's receives are done
        # (_send_replies; see REPLY_BATCH for why). Anything unusual (no answer, EOF,
        # an error, a close) sends the replies so far first, so that the general
        # path never writes ahead of a reply, and then goes to _pump and friends.
        conns = self.conns
        answer_size = self.answer_size
        read = os.read
        replies: list[tuple[LoopConnection, bytes]] = []
        for fd, events in ready:
            try:
                conn = conns[fd]
            except KeyError:
                if fd in self.listeners and self._watching:
                    if replies:
                        self._send_replies(replies, now)
                    self._accept(self.listeners[fd], now)
                continue  # or a connection closed earlier in this pass
            answer = conn.fast  # None unless reading with a fast path
            if answer is None:
                if replies:
                    self._send_replies(replies, now)
                if conn.reading:
                    self._receive(conn, events, now)
                else:
                    self._pump(conn, now)
                continue
            size = conn.read_size
            try:
                data = read(fd, size)
            except BlockingIOError:
                continue
            except OSError as exc:
                if replies:
                    self._send_replies(replies, now)
                self._broken(conn, exc)
                continue
            if not data:
                if replies:
                    self._send_replies(replies, now)
                self._received(conn, data, now)  # EOF takes the general turn
                continue
            got = len(data)
            conn.bytes_received += got
            if got == size or got < conn.read_low or events != READABLE:
                self._resized(conn, got, events)  # rare: see there
            try:
                out = answer(data, answer_size)
            except BaseException as exc:  # a protocol's SystemExit too (_isolation.py)
                if replies:
                    self._send_replies(replies, now)
                self._failed(conn, exc)
                continue
            if out:
                replies.append((conn, out))
            elif out is None:
                if replies:
                    self._send_replies(replies, now)
                self._received(conn, data, now)
            else:
                conn.waiting_since = now  # nothing to say: a new wait for the peer
        if replies:
            self._send_replies(replies, now)

    def _send_replies(self, replies: list[tuple[LoopConnection, bytes]], now: float) -> None:
        # Send the fast path's replies, in order, and empty the list. A connection
        # comes twice only when the pass saw it twice (see _take_again); if its first
        # reply did not fit, or broke the connection, the second takes the late way.
        write = os.write
        for conn, out in replies:
            if conn.fast is None:
                self._late_reply(conn, out)
                continue
            try:
                sent = write(conn.fd, out)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._broken(conn, exc)
                continue
            conn.bytes_sent += sent
            if sent < len(out):
                conn.pending = memoryview(out)[sent:]
                self._want_to_send(conn, now, progressed=sent > 0)
                continue
            conn.waiting_since = now  # a new wait for the peer starts now
        replies.clear()

    def _late_reply(self, conn: LoopConnection, out: bytes) -> None:
        # A second reply of a connection whose first one this pass could not send
        # whole: it queues behind the rest (the connection waits for WRITABLE now).
        # A connection closed meanwhile (fast is None too) drops it with the rest.
        if self.conns.get(conn.fd) is conn:
            conn.pending = bytes(conn.pending) + out

    def _receive(self, conn: LoopConnection, events: int, now: float) -> None:
        # A connection waiting for bytes, without the fast path.
        try:
            data = os.read(conn.fd, conn.read_size)
        except BlockingIOError:
            return
        except OSError as exc:
            self._broken(conn, exc)
            return
        if data:
            conn.bytes_received += len(data)
            self._resized(conn, len(data), events)
        self._received(conn, data, now)

    def _resized(self, conn: LoopConnection, got: int, events: int) -> None:
        # After a receive of ``got`` bytes (> 0) that asked for ``conn.read_size``.
        # The size adapts to the peer, as Netty's AdaptiveRecvByteBufAllocator does: a
        # receive that fills it asks for 4x next time (up to recv_size), one of less
        # than a quarter for half (down to READ_SIZE_MIN). Chunks of one size never
        # make it swing: after a halving they no longer fill it.
        size = conn.read_size
        if got == size:
            if self._edge:  # more bytes may wait behind these: no new edge will say
                self._again.append((conn.fd, events))
            if size < self.recv_size:
                conn.set_read_size(min(size * 4, self.recv_size))
            return
        if got < conn.read_low:
            conn.set_read_size(max(size // 2, READ_SIZE_MIN))
        if events & PEER_CLOSED and self._edge:
            self._again.append((conn.fd, events))  # the EOF waits behind the bytes

    def _received(self, conn: LoopConnection, data: bytes, now: float) -> None:
        # The general turn: the protocol takes the bytes, the driver loop the rest.
        try:
            conn.receive_data(data)
        except BaseException as exc:  # a protocol's SystemExit too (_isolation.py)
            self._failed(conn, exc)
            return
        conn.pending = b""
        self._pump(conn, now)

    def _pump(self, conn: LoopConnection, now: float) -> None:
        # The protocol driver loop, until the connection must wait or has had its turn.
        pending = conn.pending
        budget = SEND_BUDGET
        try:
            while True:
                if pending:
                    try:
                        sent = os.write(conn.fd, pending)
                    except BlockingIOError:
                        sent = 0
                    except OSError as exc:
                        self._broken(conn, exc)
                        return
                    conn.bytes_sent += sent
                    if sent < len(pending):
                        conn.pending = memoryview(pending)[sent:]
                        self._want_to_send(conn, now, progressed=sent > 0)
                        return
                    budget -= 1
                    if not budget:
                        conn.pending = b""
                        if self._edge and not conn.reading:
                            # Room is left, so no edge will come: look again.
                            self._again.append((conn.fd, WRITABLE))
                        self._want_to_send(conn, now, progressed=True)
                        return
                pending = conn.data_to_send(SEND_SIZE)
                if not pending:
                    conn.pending = b""
                    if conn.protocol.close_after_flush:
                        self._close(conn)
                        return
                    if not conn.reading:
                        conn.reading = True
                        conn.fast = conn.answer
                        conn.waiting = RECEIVING
                        self.mux.modify(conn.fd, READABLE)
                    conn.waiting_since = now
                    return
        except BaseException as exc:  # a protocol's SystemExit too (_isolation.py)
            self._failed(conn, exc)

    def _want_to_send(self, conn: LoopConnection, now: float, *, progressed: bool) -> None:
        # The write clock starts when the wait for room starts, and any progress
        # restarts it (a slow but steady reader is served); an attempt that moved no
        # byte does not (the nonblocking loop attempts on every pass).
        if conn.reading:
            conn.reading = False
            conn.fast = None
            conn.waiting = SENDING
            conn.waiting_since = now
            self.mux.modify(conn.fd, WRITABLE)
        elif progressed:
            conn.waiting_since = now

    # -- accepting ----------------------------------------------------------------

    def _accept(self, listener: socket.socket, now: float) -> None:
        host = self.host
        fd_limit = self.mux.fd_limit
        for _ in range(ACCEPT_BATCH):
            if not host.should_accept():
                self._update_listening(now)  # full: the backlog holds the newcomers
                return
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # InterruptedError (EINTR) included: retried at once
                pause = host.accept_failed(listener, exc)
                if not pause:  # one queued connection died: take the next one now
                    continue
                self._paused_until = now + pause
                self._attention = True
                self._update_listening(now)
                return
            if fd_limit is not None and sock.fileno() >= fd_limit:
                host.refused(sock, fd_limit)
                sock.close()
                continue
            names = host.admit(sock, addr)
            if names is not None:
                self._open(sock, names, now)
        else:
            if self._edge:  # a full batch: more may wait, and no new edge says so
                self._again.append((listener.fileno(), READABLE))

    def _open(self, sock: socket.socket, names: tuple[str, str], now: float) -> None:
        conn = LoopConnection(self, sock, peer=names[0], local=names[1], now=now)
        self.conns[conn.fd] = conn
        self.mux.register(conn.fd, READABLE)
        self.host.opened(conn)
        try:
            conn.attach(self.protocol_factory())
        except BaseException as exc:  # a protocol's SystemExit too (_isolation.py)
            self._failed(conn, exc)
            return
        self._pump(conn, now)  # some protocols speak first (daytime, chargen)

    def _update_listening(self, now: float) -> None:
        paused = self._paused_until is not None and now < self._paused_until
        want = not (self._stopping or paused) and self.host.should_accept()
        if want != self._watching:
            self._watching = want
            for fd in self.listeners:
                if want:
                    self.mux.register(fd, READABLE)
                else:
                    self.mux.unregister(fd)
        if self._stopping:
            self.not_accepting.set()

    # -- the rest of a pass ---------------------------------------------------------

    def _tend(self, now: float) -> float | None:
        # Work that does not come from a ready fd; returns the next wait's timeout.
        self._attention = False
        expired, self._expired = self._expired, []
        for conn in expired:
            self._close(conn)  # the keeper has counted the timeout
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
        self._update_listening(now)
        if self._paused_until is None:
            return None
        self._attention = True  # come back when the pause ends
        return self._paused_until - now

    def _close(self, conn: LoopConnection) -> None:
        if self.conns.pop(conn.fd, None) is not conn:
            return  # closed already (an expiry and an error in the same pass)
        conn.fast = None  # a reply still queued in this pass is dropped (_late_reply)
        self.mux.unregister(conn.fd)
        close_fd(conn.sock)
        self.host.closed(conn)
        if not self._watching and not self._stopping and self._paused_until is None:
            self._update_listening(0.0)  # a slot freed: accept again if we were full

    def _broken(self, conn: LoopConnection, exc: OSError) -> None:
        self.host.broken(conn, exc)
        self._close(conn)

    def _failed(self, conn: LoopConnection, exc: BaseException) -> None:
        try:
            self.host.failed(conn, exc)
        finally:
            self._close(conn)

    def _close_all(self) -> None:
        conns = list(self.conns.values())
        self.conns.clear()
        for conn in conns:
            close_fd(conn.sock)
            self.host.closed(conn)
        self.not_accepting.set()
        self.mux.close()
