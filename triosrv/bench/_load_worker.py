"""One worker of the echo load generator: an epoll loop over its share of the connections.

Theory of operation
-------------------
The generator must be cheaper than the server it measures, or the figures describe the
generator. So it does not run on trio or asyncio: it is one level-triggered
``select.epoll`` loop over non-blocking sockets, with the per-round-trip work inlined in
one hot function (`_Worker.pump`) and everything rare (connect completion, partial sends,
failures) moved to helpers. Where there is no epoll (macOS, the BSDs) the same loop runs
over ``select.poll`` (`_PollSet`), whose event bits are the same numbers.

Each connection keeps ``pipeline`` messages of ``size`` bytes in flight. The echo is
checked without buffering: the bytes a connection should receive next are always a slice
of ``ring`` (the payload repeated ``pipeline + 1`` times) starting at the offset inside the
current message, so one ``recv`` is checked by one bytes comparison, whatever the server's
segmentation. A mismatch -- a wrong byte, or more bytes than are in flight -- closes that
connection and counts as an error.

A run has three phases, all on the `time.perf_counter` clock, each with a deadline:

1. connect: every socket is created and connected at once (non-blocking); a connection
   sends its first messages as soon as its own connect completes, so the phase overlaps
   with the next one and the first echo of every connection measures a connection burst;
2. warm-up (not measured): at least ``warmup`` seconds and until every connection has had
   its first echo, but at most ``warmup + connect_timeout`` seconds from the start;
3. the measured window: ``duration`` seconds.

Latencies are kept as a systematic sample in an ``array('d')``: when it reaches
`_SAMPLE_CAP` entries every second one is dropped and only every second round trip is
recorded from then on, so memory stays bounded for any duration.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from array import array
from collections import deque

import attrs

__all__ = ["Plan", "WorkerStats", "run_worker"]

# poll's event bits. epoll's are the same numbers (IN 1, OUT 4, ERR 8, HUP 16), so one set
# serves both pollers; naming them from poll keeps this module importable without epoll.
_EPOLLIN: int = getattr(select, "POLLIN", 0x001)  # (no poll at all: import, don't run)
_EPOLLOUT: int = getattr(select, "POLLOUT", 0x004)
_EPOLL_TROUBLE: int = getattr(select, "POLLERR", 0x008) | getattr(select, "POLLHUP", 0x010)
_SAMPLE_CAP = 1 << 18  # latency samples kept per worker (2 MiB of doubles)
_POLL_SLICE = 0.1  # longest single epoll wait, so deadlines are checked often enough
_WARMUP_SLICE = 0.01  # the warm-up re-checks "every connection echoed" this often


@attrs.frozen(kw_only=True)
class WorkerStats:
    """What one worker reports; plain values, so that it pickles through a pipe."""

    connections: int
    round_trips: int
    window: float
    samples: bytes
    mask: int
    errors: dict[str, int]
    connect_ms: float | None
    first_echo_ms: float | None
    cpu_seconds: float


@attrs.frozen(kw_only=True)
class Plan:
    """Everything a worker needs; times are absolute `time.perf_counter` values."""

    family: socket.AddressFamily
    address: tuple[str, int]
    payload: bytes
    pipeline: int
    origin: float
    warmup: float
    duration: float
    connect_timeout: float


class _Conn:
    __slots__ = ("connected", "first_done", "off", "out", "recv", "send", "sent_at", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # Bound once: the hot loop calls them per round trip.
        self.recv = sock.recv
        self.send = sock.send
        self.connected = False
        self.first_done = False
        self.off = 0  # bytes of the current message already echoed
        self.out = b""  # bytes a partial send left over, waiting for EPOLLOUT
        self.sent_at: deque[float] = deque()  # send time of each message in flight


def _errno_kind(op: str, exc: OSError | int) -> str:
    code = exc if isinstance(exc, int) else exc.errno
    if code is None:
        return f"{op}:{type(exc).__name__}"
    return f"{op}:{errno.errorcode.get(code, str(code))}"


class _PollSet:
    """``select.poll`` behind epoll's method names, for a platform without epoll.

    Only the wait differs: epoll's timeout is in seconds, poll's in milliseconds.
    """

    def __init__(self) -> None:
        self._poller = select.poll()

    def register(self, fd: int, events: int) -> None:
        self._poller.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self._poller.modify(fd, events)

    def unregister(self, fd: int) -> None:
        self._poller.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return self._poller.poll(timeout * 1000.0)

    def close(self) -> None:
        pass  # poll keeps no kernel object


def _open_poller() -> select.epoll | _PollSet:
    # epoll where the platform has it (Linux): the kernel keeps the set between waits.
    return select.epoll() if hasattr(select, "epoll") else _PollSet()


class _Worker:
    """One epoll loop over a share of the connections; owns and closes its sockets."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.epoll = _open_poller()
        self.conns: dict[int, _Conn] = {}
        self.payload = plan.payload
        self.size = len(plan.payload)
        self.ring = plan.payload * (plan.pipeline + 1)
        self.live = 0
        self.pending_connects = 0
        self.pending_first = 0
        self.lost_before_connect = 0
        self.lost_before_first = 0
        self.errors: dict[str, int] = {}
        self.samples = array("d")
        self.mask = 0  # record a latency when (round trip number & mask) == 0
        self.round_trips = 0
        self.t_all_connected: float | None = None
        self.t_all_first: float | None = None

    def pump(self, until: float, *, record: bool) -> None:
        # The hot loop: the work of a round trip is inlined on purpose (a method call per
        # event is a measurable share of the generator's budget); rare events go to helpers.
        poll, conns, clock = self.epoll.poll, self.conns, time.perf_counter
        size, ring, payload = self.size, self.ring, self.payload
        bufsize = len(ring) - size  # the most bytes ever in flight
        append, rts, mask = self.samples.append, self.round_trips, self.mask
        now = clock()
        while now < until and self.live:
            for fd, ev in poll(min(until - now, _POLL_SLICE)):
                c = conns[fd]
                if ev != _EPOLLIN and self._on_other_event(c, ev):
                    continue
                try:
                    # One byte more than can be in flight: a server that echoes extra
                    # bytes shows it here, not as the echo of the next message.
                    data = c.recv(bufsize + 1)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._fail(c, _errno_kind("recv", exc))
                    continue
                start = c.off
                if not start and data == payload and c.first_done and not c.out:
                    # The common case, kept short: exactly one whole echo came back.
                    t = clock()
                    sent_at = c.sent_at
                    latency = t - sent_at.popleft()
                    sent_at.append(t)
                    if record:
                        rts += 1
                        if not rts & mask:
                            append(latency)
                    self._send(c, payload)
                    continue
                off = start + len(data)
                # Never more than is in flight (pipeline messages, minus what a partial
                # send still holds).
                if not data or off > bufsize - len(c.out) or data != ring[start:off]:
                    self._fail(c, "mismatch" if data else "eof")
                    continue
                if off < size:
                    c.off = off
                    continue
                done, c.off = divmod(off, size)
                t = clock()
                sent_at = c.sent_at
                for _ in range(done):
                    latency = t - sent_at.popleft()
                    sent_at.append(t)
                    if record:
                        rts += 1
                        if not rts & mask:
                            append(latency)
                if not c.first_done:
                    self._first_echo(c, t)
                self._send(c, payload if done == 1 else ring[: done * size])
            now = clock()
            if len(self.samples) >= _SAMPLE_CAP:
                mask = self._decimate()
        self.round_trips = rts

    def _decimate(self) -> int:
        # Keep every second sample and record every second round trip from now on.
        del self.samples[1::2]
        self.mask = self.mask * 2 + 1
        return self.mask

    def _on_other_event(self, c: _Conn, ev: int) -> bool:
        # Anything but plain readability. True when the event is fully handled; False
        # lets the hot path recv (which also reports errors and hang-ups).
        if not c.connected:
            self._finish_connect(c)
            return True
        if ev & _EPOLLOUT and not self._flush(c):
            return True
        return not ev & (_EPOLLIN | _EPOLL_TROUBLE)

    def open_all(self, count: int) -> None:
        """Create and start connecting ``count`` sockets without waiting for any."""
        for _ in range(count):
            try:
                sock = socket.socket(self.plan.family, socket.SOCK_STREAM)
            except OSError as exc:
                self._count(_errno_kind("socket", exc))
                self.lost_before_connect += 1
                self.lost_before_first += 1
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(self.plan.address)
            c = _Conn(sock)
            self.conns[sock.fileno()] = c
            self.epoll.register(sock.fileno(), _EPOLLOUT)
            self.live += 1
            self.pending_connects += 1
            self.pending_first += 1
            if code not in (0, errno.EINPROGRESS):
                self._fail(c, _errno_kind("connect", code))

    def _finish_connect(self, c: _Conn) -> None:
        code = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._fail(c, _errno_kind("connect", code))
            return
        t = time.perf_counter()
        c.connected = True
        self.pending_connects -= 1
        if not self.pending_connects:
            self.t_all_connected = t
        self.epoll.modify(c.sock.fileno(), _EPOLLIN)
        pipeline = self.plan.pipeline
        c.sent_at.extend([t] * pipeline)
        self._send(c, self.ring[: pipeline * self.size])

    def _send(self, c: _Conn, data: bytes) -> None:
        if c.out:  # an earlier partial send is still waiting: keep the byte order
            c.out += data
            return
        try:
            sent = c.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(c, _errno_kind("send", exc))
            return
        if sent < len(data):
            c.out = data[sent:]
            self.epoll.modify(c.sock.fileno(), _EPOLLIN | _EPOLLOUT)

    def _flush(self, c: _Conn) -> bool:
        # Send what a partial send left; False when the connection failed.
        try:
            sent = c.sock.send(c.out)
        except BlockingIOError:
            return True
        except OSError as exc:
            self._fail(c, _errno_kind("send", exc))
            return False
        c.out = c.out[sent:]
        if not c.out:
            self.epoll.modify(c.sock.fileno(), _EPOLLIN)
        return True

    def _first_echo(self, c: _Conn, t: float) -> None:
        c.first_done = True
        self.pending_first -= 1
        if not self.pending_first:
            self.t_all_first = t

    def _count(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def _fail(self, c: _Conn, kind: str) -> None:
        # Count the error and close this connection; the others go on.
        self._count(kind)
        if not c.connected:
            self.pending_connects -= 1
            self.lost_before_connect += 1
        if not c.first_done:
            self.pending_first -= 1
            self.lost_before_first += 1
        self._close(c)

    def _close(self, c: _Conn) -> None:
        fd = c.sock.fileno()
        self.epoll.unregister(fd)
        del self.conns[fd]
        c.sock.close()
        self.live -= 1

    def expire_connects(self) -> None:
        """Fail every connection whose connect has not completed yet."""
        for c in [c for c in self.conns.values() if not c.connected]:
            self._fail(c, "connect_timeout")

    def close(self) -> None:
        """Close every socket and the epoll object; idempotent."""
        for c in list(self.conns.values()):
            self._close(c)
        self.epoll.close()


def _warm_up(worker: _Worker) -> None:
    # At least `warmup` seconds and until every connection has echoed once, bounded.
    plan = worker.plan
    connect_deadline = plan.origin + plan.connect_timeout
    soonest = plan.origin + plan.warmup
    cap = soonest + plan.connect_timeout
    while worker.live:
        now = time.perf_counter()
        if now >= connect_deadline and worker.pending_connects:
            worker.expire_connects()
        if now >= cap or (now >= soonest and not worker.pending_first):
            return
        worker.pump(min(now + _WARMUP_SLICE, cap), record=False)


def _since_origin_ms(origin: float, t: float | None, lost: int) -> float | None:
    return None if t is None or lost else (t - origin) * 1000.0


def run_worker(plan: Plan, connections: int) -> WorkerStats:
    """Run one worker's share of the connections to the end and report."""
    worker = _Worker(plan)
    try:
        worker.open_all(connections)
        _warm_up(worker)
        cpu0, t0 = time.thread_time(), time.perf_counter()
        worker.pump(t0 + plan.duration, record=True)
        window = time.perf_counter() - t0
        # thread_time, not process time: a caller may run the server under test in
        # another thread of this same process (the tests do).
        cpu = time.thread_time() - cpu0
        never_echoed = worker.pending_first
    finally:
        worker.close()
    errors = dict(worker.errors)
    if never_echoed:
        errors["no_first_echo"] = errors.get("no_first_echo", 0) + never_echoed
    return WorkerStats(
        connections=connections,
        round_trips=worker.round_trips,
        window=window,
        samples=worker.samples.tobytes(),
        mask=worker.mask,
        errors=errors,
        connect_ms=_since_origin_ms(
            plan.origin, worker.t_all_connected, worker.lost_before_connect
        ),
        first_echo_ms=_since_origin_ms(plan.origin, worker.t_all_first, worker.lost_before_first),
        cpu_seconds=cpu,
    )
