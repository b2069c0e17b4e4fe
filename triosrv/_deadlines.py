"""One timer task per server that fires every connection's timeouts.

See the theory of operation in ``_connection.py``. The keeper never needs to be told
when a connection starts waiting: every timeout is measured from a moment that is not
in the past, so anything that starts after a scan is due no sooner than
``now + shortest_timeout``. The keeper therefore sleeps until the earliest due time it
saw, or ``now + shortest_timeout``, whichever comes first, and cannot wake late.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Protocol

import trio

from ._config import Timeouts


class LiveConnection(Protocol):
    """What every backend's connection objects have: the server tracks them, the
    keeper expires them, ``Server.connections()`` lists them.

    :class:`~triosrv.Connection` (the ``trio`` backend) and
    :class:`triosrv.lowlevel.ConnectionRecord` (every other backend) both qualify.
    """

    id: int
    peer: str
    local: str
    started_at: float
    bytes_received: int
    bytes_sent: int
    draining: bool

    @property
    def timed_out(self) -> str | None:
        """The kind of timeout that ended the connection, or None."""

    def _next_deadline(self, timeouts: Timeouts) -> tuple[float, str]: ...

    def _expire(self, kind: str, timeouts: Timeouts) -> None: ...


class DeadlineKeeper:
    """Fires idle, write and lifetime timeouts for a set of live connections.

    ``connections`` is the server's own mapping of live connections (shared, not
    copied). Fired timeouts are counted in ``fired`` by kind.
    """

    def __init__(self, timeouts: Timeouts, connections: Mapping[int, LiveConnection]) -> None:
        self.timeouts = timeouts
        self.connections = connections
        self.fired: Counter[str] = Counter()
        windows = [t for t in (timeouts.idle, timeouts.write, timeouts.lifetime) if t]
        self._window = min(windows) if windows else None

    async def run(self) -> None:
        """Run until cancelled; owned by the server's connection nursery."""
        if self._window is None:
            await trio.sleep_forever()
        while True:
            await trio.sleep_until(self.fire_due(trio.current_time()))

    def fire_due(self, now: float) -> float:
        """Expire every connection that is due at ``now``; return when to look again."""
        assert self._window is not None
        timeouts = self.timeouts
        wake = now + self._window
        for conn in self.connections.values():
            if conn.timed_out is not None:
                continue
            due, kind = conn._next_deadline(timeouts)
            if due <= now:
                self.fired[kind] += 1
                conn._expire(kind, timeouts)
            elif due < wake:
                wake = due
        return wake if wake != math.inf else now + self._window
