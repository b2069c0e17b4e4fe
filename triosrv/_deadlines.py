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

import trio

from ._config import Timeouts
from ._connection import Connection


class DeadlineKeeper:
    """Fires idle, write and lifetime timeouts for a set of live connections.

    ``connections`` is the server's own mapping of live connections (shared, not
    copied). Fired timeouts are counted in ``fired`` by kind.
    """

    def __init__(self, timeouts: Timeouts, connections: Mapping[int, Connection]) -> None:
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
            if conn._expired is not None:
                continue
            due, kind = conn._next_deadline(timeouts)
            if due <= now:
                self.fired[kind] += 1
                conn._expire(kind, timeouts)
            elif due < wake:
                wake = due
        return wake if wake != math.inf else now + self._window
