"""triosrv.lowlevel: fd waits and closing, the three multiplexers, interruptible threads."""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing

from triosrv import lowlevel
from triosrv.lowlevel import (
    FD_SETSIZE,
    PEER_CLOSED,
    READABLE,
    WRITABLE,
    ConnectionRecord,
    EpollMultiplexer,
    EventLoop,
    Multiplexer,
    NonblockingMultiplexer,
    PollMultiplexer,
    SelectMultiplexer,
)
from triosrv.protocols import Echo, Protocol
from triosrv.testing import wait_for

MULTIPLEXERS: list[Callable[[], Multiplexer]] = [
    SelectMultiplexer,
    PollMultiplexer,
    EpollMultiplexer,
]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture(params=MULTIPLEXERS, ids=lambda m: m.__name__)
def mux(request: pytest.FixtureRequest) -> Iterator[Multiplexer]:
    made: Multiplexer = request.param()
    try:
        yield made
    finally:
        made.close()


# -- fds ---------------------------------------------------------------------------


async def test_wait_readable_returns_when_bytes_arrive(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lowlevel.wait_readable, a)
        await trio.testing.wait_all_tasks_blocked()
        b.send(b"x")
    assert a.recv(1) == b"x"
    await lowlevel.wait_writable(a.fileno())  # an empty send buffer: at once


async def test_wait_readable_allows_one_waiter_per_direction(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, _b = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lowlevel.wait_readable, a)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await lowlevel.wait_readable(a)
        await lowlevel.wait_writable(a)  # the other direction is free
        nursery.cancel_scope.cancel()


async def test_close_fd_wakes_the_waiter_before_closing() -> None:
    a, b = socket.socketpair()
    results: list[BaseException] = []

    async def waiter() -> None:
        try:
            await lowlevel.wait_readable(a)
        except trio.ClosedResourceError as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        lowlevel.close_fd(a)
    assert len(results) == 1
    assert a.fileno() == -1
    lowlevel.close_fd(a)  # a closed socket: nothing to do
    raw = os.dup(b.fileno())
    lowlevel.close_fd(raw)  # an int: closed with os.close
    with pytest.raises(OSError):
        os.fstat(raw)
    b.close()


# -- the multiplexers ----------------------------------------------------------------


async def test_multiplexer_reports_readable_then_writable(
    mux: Multiplexer, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    mux.register(a.fileno(), READABLE)
    assert len(mux) == 1 and a.fileno() in mux
    with trio.move_on_after(0.05):
        assert await mux.wait() == []
        pytest.fail("nothing was ready")
    b.send(b"x")
    assert await mux.wait() == [(a.fileno(), READABLE)]
    mux.modify(a.fileno(), WRITABLE)
    assert await mux.wait() == [(a.fileno(), WRITABLE)]
    mux.unregister(a.fileno())
    assert len(mux) == 0
    assert await mux.wait(timeout=0.01) == []
    assert mux.calls >= 3


async def test_multiplexer_register_twice_or_unknown_is_keyerror(
    mux: Multiplexer, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _b = pair
    mux.register(a.fileno(), READABLE)
    with pytest.raises(KeyError):
        mux.register(a.fileno(), READABLE)
    with pytest.raises(KeyError):
        mux.modify(a.fileno() + 1000, READABLE)
    with pytest.raises(KeyError):
        mux.unregister(a.fileno() + 1000)


async def test_multiplexer_wait_timeout_returns_empty(mux: Multiplexer) -> None:
    # Real time because select() and poll() time out in the kernel, in a thread: no
    # virtual clock reaches them. Generous for a loaded machine; never early.
    start = trio.current_time()
    assert await mux.wait(timeout=0.1) == []
    assert 0.09 < trio.current_time() - start < 3.0


async def test_multiplexer_wakeup_ends_a_wait_without_reporting_its_fd(mux: Multiplexer) -> None:
    async def wake_soon() -> None:
        await trio.sleep(0.05)  # real sleep: the wait must be blocked in its syscall
        mux.wakeup()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wake_soon)
        with trio.fail_after(2):
            assert await mux.wait() == []
    with trio.move_on_after(0.05):  # the wake-up was consumed: the next wait blocks
        await mux.wait()
        pytest.fail("a consumed wake-up woke a second wait")


async def test_multiplexer_cancelled_wait_returns_promptly_and_joins(mux: Multiplexer) -> None:
    # Real time because the wait is blocked in a real syscall (in a thread) that only the
    # wake-up fd ends; without it the wait would never return (no timeout is set), so a
    # generous bound still tells woken from stuck.
    threads_before = threading.active_count()

    async def cancel_soon(scope: trio.CancelScope) -> None:
        await trio.sleep(0.05)  # real sleep: let the wait reach its blocking syscall
        scope.cancel()
        cancelled_at.append(trio.current_time())

    cancelled_at: list[float] = []
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_soon, scope)
            await mux.wait()
    assert scope.cancelled_caught
    assert trio.current_time() - cancelled_at[0] < 2.0
    busy = [t for t in threading.enumerate() if t.name.startswith("triosrv ")]
    assert busy == []  # the select()/poll() thread returned (to trio's idle cache)
    assert threading.active_count() <= threads_before + 1


async def test_select_refuses_fds_at_or_above_fd_setsize(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, _b = pair
    high = os.dup2(a.fileno(), FD_SETSIZE + 10)
    mux = SelectMultiplexer()
    try:
        assert mux.fd_limit == FD_SETSIZE
        with pytest.raises(ValueError, match="FD_SETSIZE"):
            mux.register(high, READABLE)
        assert len(mux) == 0
    finally:
        mux.close()
        os.close(high)
    assert PollMultiplexer.fd_limit is EpollMultiplexer.fd_limit is None


async def test_select_and_poll_pass_every_fd_to_the_syscall() -> None:
    pairs = [socket.socketpair() for _ in range(10)]
    try:
        for make in (SelectMultiplexer, PollMultiplexer):
            mux = make()
            try:
                for a, _b in pairs:
                    mux.register(a.fileno(), READABLE)
                pairs[3][1].send(b"x")
                assert await mux.wait() == [(pairs[3][0].fileno(), READABLE)]
                assert mux.last_watched == 10 + 1  # and the wake-up fd
            finally:
                mux.close()
            pairs[3][0].recv(1)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


async def test_epoll_waits_on_its_own_fd_through_trio() -> None:
    a, b = socket.socketpair()
    mux = EpollMultiplexer()
    try:
        mux.register(a.fileno(), READABLE)
        async with trio.open_nursery() as nursery:

            async def wait() -> None:
                assert await mux.wait() == [(a.fileno(), READABLE)]

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            # Blocked in trio, on the epoll fd: a second waiter on it is refused.
            with pytest.raises(trio.BusyResourceError):
                await trio.lowlevel.wait_readable(mux._epoll_fd)
            b.send(b"x")
    finally:
        mux.close()
        a.close()
        b.close()


def epoll_sets_holding(fd: int) -> list[int]:
    """This process's epoll fds whose set holds ``fd`` (from /proc/self/fdinfo)."""
    holders = []
    for name in os.listdir("/proc/self/fdinfo"):
        try:
            with open(f"/proc/self/fdinfo/{name}") as info:
                lines = info.read().splitlines()
        except OSError:  # the listing's own fd, gone already
            continue
        if any(line.split()[:2] == ["tfd:", str(fd)] for line in lines):
            holders.append(int(name))
    return holders


async def test_epoll_fd_leaves_trios_set_once_a_wait_finds_it_busy() -> None:
    # While trio's epoll set holds our epoll fd, every event of ours also wakes that
    # entry (a cost to the peer's CPU); a busy loop must not keep it there.
    a, b = socket.socketpair()
    a.setblocking(False)
    mux = EpollMultiplexer(edge_triggered=True)
    try:
        mux.register(a.fileno(), READABLE)
        assert epoll_sets_holding(mux._epoll_fd) == []
        with trio.move_on_after(0.01):  # idle: a trio wait adds it to trio's set
            await mux.wait()
        [trios] = epoll_sets_holding(mux._epoll_fd)
        b.send(b"x")
        assert await mux.wait() == [(a.fileno(), READABLE)]  # busy: it leaves
        assert epoll_sets_holding(mux._epoll_fd) == []
        a.recv(1)
        async with trio.open_nursery() as nursery:  # idle again: a trio wait
            nursery.start_soon(mux.wait)
            await trio.testing.wait_all_tasks_blocked()
            assert epoll_sets_holding(mux._epoll_fd) == [trios]
            b.send(b"y")  # and the wait is woken through trio's set
        assert epoll_sets_holding(mux._epoll_fd) == [trios]  # a loop going to sleep stays
    finally:
        mux.close()
        a.close()
        b.close()


async def test_epoll_edge_triggered_reports_each_change_once() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    level, edge = EpollMultiplexer(), EpollMultiplexer(edge_triggered=True)
    assert (level.edge_triggered, edge.edge_triggered) == (False, True)
    try:
        for mux in (level, edge):
            mux.register(a.fileno(), READABLE)
        b.send(b"xy")
        for mux in (level, edge):
            assert await mux.wait() == [(a.fileno(), READABLE)]
        a.recv(1)  # one byte is left, and nothing new came
        assert level.poll_now() == [(a.fileno(), READABLE)]  # still ready: again
        assert edge.poll_now() == []  # no new edge: not again
        b.send(b"z")
        assert edge.poll_now() == [(a.fileno(), READABLE)]  # a new edge
        assert edge.poll_now() == []
        edge.modify(a.fileno(), READABLE)  # re-arms: ready now, so reported
        assert edge.poll_now() == [(a.fileno(), READABLE)]
        b.shutdown(socket.SHUT_WR)  # a new edge, saying that an EOF waits
        [(fd, events)] = edge.poll_now()
        assert fd == a.fileno()
        assert events & READABLE and events & PEER_CLOSED
        for mux in (level, edge):
            mux.unregister(a.fileno())
    finally:
        level.close()
        edge.close()
        a.close()
        b.close()


async def test_try_every_fd_reports_everything_and_sleeps_when_idle(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Virtual time: the loop's idle wait is a trio.sleep, and fds 5 and 6 are never read.
    poller = NonblockingMultiplexer(interval=0.2)
    moved = [0]
    poller.progress = lambda: moved[0]
    poller.register(5, READABLE)
    poller.register(6, WRITABLE)
    assert await poller.wait() == [(5, READABLE), (6, WRITABLE)]  # first pass: no sleep
    start = trio.current_time()
    await poller.wait()  # nothing moved since: sleeps one interval
    assert trio.current_time() - start == pytest.approx(0.2)
    moved[0] += 1
    start = trio.current_time()
    await poller.wait()  # progress: straight on
    assert trio.current_time() == start
    assert poller.poll_now() == []
    poller.close()


# -- the loop's passes --------------------------------------------------------------


class _Host:
    """A LoopHost that admits every socket handed to it and notes what happens."""

    def __init__(self, *, sndbuf: int | None = None) -> None:
        self.sndbuf = sndbuf
        self.events: list[str] = []

    def should_accept(self) -> bool:
        return True

    def admit(self, sock: socket.socket, addr: object) -> tuple[str, str] | None:
        sock.setblocking(False)
        if self.sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        return ("peer", "local")

    def opened(self, conn: ConnectionRecord) -> None:
        self.events.append("opened")

    def closed(self, conn: ConnectionRecord) -> None:
        self.events.append("closed")

    def failed(self, conn: ConnectionRecord, exc: Exception) -> None:
        raise exc

    def broken(self, conn: ConnectionRecord, exc: OSError) -> None:
        self.events.append(f"broken: {os.strerror(exc.errno or 0)}")

    def accept_failed(self, listener: socket.socket, exc: OSError) -> float:
        raise exc

    def refused(self, sock: socket.socket, fd_limit: int) -> None:
        raise AssertionError("no fd limit here")


class _HandOut:
    """Stands in for a listener: accept() hands out the given sockets, in order, so a
    test can queue bytes on a connection before the loop first looks at it."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self._socks = socks
        self._readable, self._bell = socket.socketpair()
        self._bell.send(b"!")  # never read: the fd stays readable

    def fileno(self) -> int:
        return self._readable.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        if not self._socks:
            raise BlockingIOError
        return self._socks.pop(0), None

    def close(self) -> None:
        self._readable.close()
        self._bell.close()


class _EveryFdTwice(EpollMultiplexer):
    """Edge-triggered epoll that reports each connection fd twice in a batch, as a pass
    does when an fd the last pass left ready (the loop's ``_again``) has a new edge too."""

    def __init__(self, listener_fd: int) -> None:
        super().__init__(edge_triggered=True)
        self._listener_fd = listener_fd

    def _twice(self, ready: lowlevel._multiplexers.Ready) -> lowlevel._multiplexers.Ready:
        return [item for item in ready for _ in range(1 if item[0] == self._listener_fd else 2)]

    async def wait(self, timeout: float | None = None) -> lowlevel._multiplexers.Ready:
        return self._twice(await super().wait(timeout))

    def poll_now(self) -> lowlevel._multiplexers.Ready:
        return self._twice(super().poll_now())


async def _serve_until(
    done: Callable[[], Awaitable[None]],
    socks: list[socket.socket],
    protocol_factory: Callable[[], Protocol],
    host: _Host,
    *,
    twice: bool,
) -> None:
    # Serve ``socks`` (the loop's ends of socketpairs) with an EventLoop until ``done``
    # returns; the loop closes them when cancelled.
    listener = _HandOut(socks)
    mux = _EveryFdTwice(listener.fileno()) if twice else EpollMultiplexer(edge_triggered=True)
    loop = EventLoop(host, mux, [listener], protocol_factory)  # type: ignore[list-item]
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(loop.run)
                await done()
                nursery.cancel_scope.cancel()
    finally:
        listener.close()


async def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        await trio.lowlevel.wait_readable(sock)
        chunk = sock.recv(65536)
        assert chunk, f"EOF after {len(got)} of {size} bytes"
        got += chunk
    return bytes(got)


async def test_loop_reply_that_does_not_fit_keeps_the_next_one_of_its_pass_behind_it() -> None:
    # Two full receives of one connection in one pass, so two replies wait together;
    # the first does not fit in the small send buffer, so the second must queue behind
    # its unsent tail, not be written ahead of it.
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    payload = bytes(range(256)) * 800  # > two receives of 64 KiB, all queued up front
    assert peer.send(payload) == len(payload)
    host = _Host(sndbuf=4096)
    echoed = b""

    async def read_the_echo() -> None:
        nonlocal echoed
        echoed = await _receive_exactly(peer, len(payload))

    try:
        await _serve_until(read_the_echo, [ours], Echo, host, twice=True)
    finally:
        peer.close()
    assert echoed == payload
    assert host.events == ["opened", "closed"]


async def test_loop_reply_of_a_connection_that_broke_in_its_pass_is_dropped_once() -> None:
    ours, peer = socket.socketpair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    assert peer.send(bytes(2 * 65536)) == 2 * 65536
    peer.close()  # the bytes stay readable; the replies meet a closed peer
    host = _Host()

    async def until_closed() -> None:
        await wait_for(lambda: "closed" in host.events, interval=0.001)

    await _serve_until(until_closed, [ours], Echo, host, twice=True)
    assert host.events == ["opened", f"broken: {os.strerror(errno.EPIPE)}", "closed"]


async def test_loop_sends_a_reply_of_its_pass_before_the_eof_that_follows_it() -> None:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    peer.send(b"hello")
    peer.shutdown(socket.SHUT_WR)
    host = _Host()
    got: list[bytes] = []

    async def read_to_eof() -> None:
        while True:
            await trio.lowlevel.wait_readable(peer)
            got.append(peer.recv(100))
            if not got[-1]:
                return

    try:
        await _serve_until(read_to_eof, [ours], Echo, host, twice=True)
    finally:
        peer.close()
    assert b"".join(got) == b"hello"
    assert host.events == ["opened", "closed"]


async def test_loop_sends_each_slice_of_replies_before_reading_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lowlevel._loop, "REPLY_BATCH", 4)
    pairs = [socket.socketpair() for _ in range(8)]
    peers = [peer for _, peer in pairs]
    for peer in peers:
        peer.setblocking(False)
        peer.send(b"ping")
    answered_before: list[int] = []  # per answer() call: peers that had their reply

    class Watching(Echo):
        def answer(self, data: bytes, max_bytes: int) -> bytes | None:
            answered_before.append(sum(1 for p in peers if _has_bytes(p)))
            return super().answer(data, max_bytes)

    async def read_all() -> None:
        for peer in peers:
            assert await _receive_exactly(peer, 4) == b"ping"

    try:
        await _serve_until(read_all, [ours for ours, _ in pairs], Watching, _Host(), twice=False)
    finally:
        for peer in peers:
            peer.close()
    # One pass saw all eight: the first slice's four replies went out together,
    # after its four receives and before the next slice's.
    assert answered_before == [0, 0, 0, 0, 4, 4, 4, 4]


def _has_bytes(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False


# -- interruptible threads --------------------------------------------------------------


async def test_run_sync_interruptible_returns_and_raises_like_the_call() -> None:
    assert await lowlevel.run_sync_interruptible(lambda: 42, lambda: None) == 42

    def fail() -> None:
        raise OSError("from the thread")

    with pytest.raises(OSError, match="from the thread"):
        await lowlevel.run_sync_interruptible(fail, lambda: None)


async def test_run_sync_interruptible_interrupts_joins_then_raises_cancelled() -> None:
    release = threading.Event()
    finished: list[bool] = []

    def blocking() -> None:
        release.wait(10)
        finished.append(True)

    with trio.move_on_after(0.05) as scope:
        await lowlevel.run_sync_interruptible(blocking, release.set)
    assert scope.cancelled_caught
    assert finished == [True]  # the thread had returned before we went on
