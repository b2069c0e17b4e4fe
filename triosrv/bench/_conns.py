"""Client-side connection tools for the structural benchmarks (no trio, plain sockets).

`ConnectionPool` opens connections to an echo server in batches and proves each one is
*served* (not merely accepted by the kernel into the backlog) by a one-byte echo. It is
what measures the largest number of connections a server serves (open until one is
refused or goes unanswered), the cost of a readiness wait with N idle connections
(`ping_pong` on one more connection), the time and memory to open N connections, and
how long a server takes to close them all (`wait_all_closed`).

Every socket is closed with SO_LINGER 0 (a reset, no TIME_WAIT): a full run opens tens
of thousands of connections, more than the ephemeral port range would hold in TIME_WAIT.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import time
from typing import TYPE_CHECKING

from ._load_worker import _EPOLLIN, _EPOLLOUT, _open_poller

if TYPE_CHECKING:
    from ._load_worker import _PollSet

__all__ = ["ConnectionPool", "ping_pong"]

_LINGER_RESET = struct.pack("ii", 1, 0)
_PROBE = b"."
# poll's bits, which are epoll's too (see _load_worker); a peer's FIN or reset also makes
# the socket readable, so _HUP is only a shortcut where the platform has one.
_IN, _OUT = _EPOLLIN, _EPOLLOUT
_HUP = getattr(select, "POLLRDHUP", 0)


def _client_options(sock: socket.socket) -> None:
    # No Nagle delay on the one-byte probes; close() resets, so that tearing down
    # thousands of connections leaves no TIME_WAIT behind.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _connect(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    _client_options(sock)
    sock.setblocking(False)
    code = sock.connect_ex(("127.0.0.1", port))
    if code not in (0, errno.EINPROGRESS):
        sock.close()
        raise ConnectionRefusedError(code, errno.errorcode.get(code, str(code)))
    return sock


class ConnectionPool:
    """Connections to one echo server on 127.0.0.1; owns and closes them (`close`)."""

    def __init__(self, port: int, *, batch: int = 256, timeout: float = 5.0) -> None:
        self.port = port
        self.batch = batch
        self.timeout = timeout
        self.socks: list[socket.socket] = []
        self.failure: str | None = None  # why the last `open_served` stopped short

    def __len__(self) -> int:
        return len(self.socks)

    def open_served(self, total: int) -> int:
        """Grow the pool to ``total`` served connections; return how many it holds.

        Stops at the first batch in which a connection is refused, reset, closed or not
        echoed within ``timeout`` seconds (that batch's served connections are kept);
        `failure` then says why.
        """
        self.failure = None
        while len(self.socks) < total and self.failure is None:
            count = min(self.batch, total - len(self.socks))
            self.socks.extend(self._open_batch(count))
        return len(self.socks)

    def _open_batch(self, count: int) -> list[socket.socket]:
        # Connect `count` sockets at once, send one byte on each as soon as it is
        # connected, and keep those whose byte comes back.
        pending: dict[int, socket.socket] = {}
        served: list[socket.socket] = []
        with contextlib.closing(_open_poller()) as ep:
            try:
                for _ in range(count):
                    sock = _connect(self.port)
                    pending[sock.fileno()] = sock
                    ep.register(sock.fileno(), _OUT)
            except OSError as exc:
                self.failure = f"connect: {exc.strerror or exc}"
            sent: set[int] = set()
            deadline = time.monotonic() + self.timeout
            while pending and time.monotonic() < deadline:
                for fd, _ in ep.poll(max(0.0, deadline - time.monotonic())):
                    state = self._advance(ep, pending[fd], fd, sent)
                    if state == "pending":
                        continue
                    ep.unregister(fd)
                    sock = pending.pop(fd)
                    if state == "served":
                        served.append(sock)
                    else:
                        sock.close()
            if pending and self.failure is None:
                self.failure = f"{len(pending)} connection(s) not served within {self.timeout:g} s"
            for sock in pending.values():
                sock.close()
        return served

    def _advance(
        self, ep: select.epoll | _PollSet, sock: socket.socket, fd: int, sent: set[int]
    ) -> str:
        # One step of a connection in a batch: send the probe once connected; "served"
        # when its echo is back, "failed" (reason in self.failure) or "pending".
        try:
            if fd not in sent:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, errno.errorcode.get(code, str(code)))
                sock.send(_PROBE)
                sent.add(fd)
                ep.modify(fd, _IN)
                return "pending"
            data = sock.recv(16)
        except BlockingIOError:
            return "pending"
        except OSError as exc:
            self.failure = f"{exc.strerror or exc}"
            return "failed"
        if data == _PROBE:
            return "served"
        self.failure = "closed by the server" if not data else f"unexpected reply {data!r}"
        return "failed"

    def wait_all_closed(self, timeout: float) -> float | None:
        """Seconds until every pooled connection sees EOF or a reset; None on timeout."""
        started = time.monotonic()
        open_fds = {s.fileno(): s for s in self.socks}
        with contextlib.closing(_open_poller()) as ep:
            for fd in open_fds:
                ep.register(fd, _IN | _HUP)
            while open_fds:
                left = started + timeout - time.monotonic()
                if left <= 0:
                    return None
                for fd, _ in ep.poll(left):
                    ep.unregister(fd)
                    del open_fds[fd]
        return time.monotonic() - started

    def close(self) -> None:
        """Close every pooled connection (with a reset); idempotent."""
        for sock in self.socks:
            sock.close()
        self.socks = []


def ping_pong(port: int, *, count: int, max_seconds: float) -> list[float]:
    """One-byte echo round trips on a fresh connection; their times in seconds.

    At most ``count`` round trips and at most ``max_seconds``; raises OSError (or
    TimeoutError after 5 s of silence) when the server stops answering.
    """
    times: list[float] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        _client_options(sock)
        clock = time.perf_counter
        stop = clock() + max_seconds
        for _ in range(count):
            t0 = clock()
            sock.sendall(_PROBE)
            if sock.recv(16) != _PROBE:
                raise ConnectionError("the server closed the active connection")
            t1 = clock()
            times.append(t1 - t0)
            if t1 > stop:
                break
    return times
