"""minikv's shared state, sans-IO: the key space, pub/sub channels, output limits.

No I/O and no clock of its own: the clock is a callable returning Unix time in
milliseconds, and a subscriber's :class:`Outbox` tells the server through two callbacks
that it has bytes to send or was cut. See ``minikv_commands.py`` for the commands.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from triosrv.protocols import resp_bulk

if TYPE_CHECKING:
    from minikv_commands import Session

Clock = Callable[[], int]
#: A value: a string, or a list (``minikv_lists.py``).
Value = bytes | deque[bytes]


class Store:
    """The key space: ``data`` (key -> value) and ``expires`` (key -> Unix ms).

    ``clock()`` returns the current Unix time in milliseconds. Expired keys are
    removed when touched and by :meth:`sweep` (the server calls it now and then).
    """

    __slots__ = ("clock", "data", "expires")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.data: dict[bytes, Value] = {}
        self.expires: dict[bytes, int] = {}

    def get(self, key: bytes) -> Value | None:
        """The live value of ``key`` (``bytes``, or a ``deque`` for a list), or None
        (an expired key is removed here)."""
        if self.expires and key in self.expires and self.expires[key] <= self.clock():
            del self.data[key]
            del self.expires[key]
            return None
        return self.data.get(key)

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; True if it existed (and had not expired)."""
        if self.get(key) is None:
            return False
        del self.data[key]
        self.expires.pop(key, None)
        return True

    def sweep(self, limit: int = 1000) -> int:
        """Remove up to ``limit`` expired keys; return how many were removed."""
        now = self.clock()
        due = [k for k, at in itertools.islice(self.expires.items(), limit) if at <= now]
        for key in due:
            del self.data[key]
            del self.expires[key]
        return len(due)

    def live_size(self) -> int:
        """Keys that have not expired."""
        now = self.clock()
        return len(self.data) - sum(1 for at in self.expires.values() if at <= now)


class Outbox:
    """A subscribed session's bounded output: replies and messages waiting to be sent.

    Redis's ``client-output-buffer-limit pubsub HARD SOFT SECONDS``: past ``hard``
    bytes, or above ``soft`` for ``soft_seconds``, the session is cut (:attr:`cut`
    becomes true and ``on_cut`` is called once). ``on_ready`` is called whenever bytes
    are added, so the server's writer wakes up. The writer takes bytes with
    :meth:`take` and reports them sent with :meth:`sent`.
    """

    __slots__ = (
        "chunks",
        "clock",
        "cut",
        "hard",
        "on_cut",
        "on_ready",
        "size",
        "soft",
        "soft_seconds",
        "soft_since",
    )

    def __init__(
        self,
        *,
        clock: Clock,
        hard: int,
        soft: int,
        soft_seconds: float,
        on_ready: Callable[[], None],
        on_cut: Callable[[], None],
    ) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0  # queued plus taken-but-not-yet-sent bytes
        self.cut = False
        self.clock = clock
        self.hard, self.soft, self.soft_seconds = hard, soft, soft_seconds
        self.soft_since: int | None = None
        self.on_ready, self.on_cut = on_ready, on_cut

    def add(self, data: bytes) -> bool:
        """Queue ``data``; returns False (and cuts the session) when over the limit."""
        if self.cut:
            return False
        self.chunks.append(data)
        self.size += len(data)
        if self.size > self.soft > 0 or self.size > self.hard > 0:
            if self._over_limit():
                self.cut = True
                self.chunks.clear()
                self.on_cut()
                return False
        else:
            self.soft_since = None
        self.on_ready()
        return True

    def _over_limit(self) -> bool:
        if self.size > self.hard > 0:
            return True
        now = self.clock()
        if self.soft_since is None:
            self.soft_since = now
        return now - self.soft_since >= self.soft_seconds * 1000

    def take(self, max_bytes: int) -> bytes:
        """Up to about ``max_bytes`` queued bytes (at least one chunk), or b""."""
        chunks = self.chunks
        if not chunks:
            return b""
        out = [chunks.popleft()]
        total = len(out[0])
        while chunks and total + len(chunks[0]) <= max_bytes:
            total += len(chunks[0])
            out.append(chunks.popleft())
        return out[0] if len(out) == 1 else b"".join(out)

    def sent(self, count: int) -> None:
        """``count`` bytes from :meth:`take` reached the kernel."""
        self.size -= count


class Broker:
    """Channels and their subscribers, in subscription order; counts cut subscribers.

    Also hands out the client ids (CLIENT ID, HELLO), from 1, per server.
    """

    __slots__ = ("channels", "client_ids", "cut_subscribers")

    def __init__(self) -> None:
        self.channels: dict[bytes, dict[Session, None]] = {}
        self.cut_subscribers = 0
        self.client_ids = itertools.count(1)

    def publish(self, channel: bytes, message: bytes) -> int:
        """Queue ``message`` for every subscriber of ``channel``; never waits.

        Returns how many subscribers it was queued for. A subscriber whose outbox goes
        over its limit is cut (unsubscribed, counted); the others are not affected.
        """
        subscribers = self.channels.get(channel)
        if not subscribers:
            return 0
        payload = b"*3\r\n$7\r\nmessage\r\n" + resp_bulk(channel) + resp_bulk(message)
        # Like Redis, a subscriber the message was queued for counts even if queueing
        # it took the subscriber past its limit.
        receivers = tuple(subscribers)
        for session in receivers:
            outbox = session.outbox
            if outbox is not None and not outbox.add(payload):
                self.drop(session)
        return len(receivers)

    def drop(self, session: Session) -> None:
        """Unsubscribe ``session`` from everything (its outbox was cut)."""
        if session.channels:
            self.cut_subscribers += 1
        for channel in session.channels:
            self.remove(channel, session)
        session.channels.clear()

    def remove(self, channel: bytes, session: Session) -> None:
        """Unsubscribe ``session`` from ``channel`` (its own list is the caller's)."""
        subscribers = self.channels.get(channel)
        if subscribers is not None:
            subscribers.pop(session, None)
            if not subscribers:
                del self.channels[channel]


class Settings(NamedTuple):
    """What CONFIG GET reports, and the limits minikv enforces."""

    max_bulk_len: int = 512 * 1024 * 1024
    max_query_buffer: int = 1024 * 1024 * 1024
    pubsub_hard: int = 32 * 1024 * 1024
    pubsub_soft: int = 8 * 1024 * 1024
    pubsub_soft_seconds: int = 60
    timeout: int = 0
    maxclients: int = 10000

    def config(self) -> dict[bytes, bytes]:
        """The parameters CONFIG GET knows, as Redis names and prints them."""
        return {
            b"save": b"",
            b"appendonly": b"no",
            b"databases": b"1",
            b"timeout": b"%d" % self.timeout,
            b"maxclients": b"%d" % self.maxclients,
            b"proto-max-bulk-len": b"%d" % self.max_bulk_len,
            b"client-query-buffer-limit": b"%d" % self.max_query_buffer,
            b"client-output-buffer-limit": b"normal 0 0 0 slave 268435456 67108864 60 "
            b"pubsub %d %d %d" % (self.pubsub_hard, self.pubsub_soft, self.pubsub_soft_seconds),
        }


_client_ids = itertools.count(1)
