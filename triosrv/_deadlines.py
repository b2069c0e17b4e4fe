"""One timer task per server that fires every connection's timeouts.

See the theory of operation in ``_connection.py``. The keeper never needs to be told
when a connection starts waiting: every timeout is measured from a moment that is not
in the past, so anything that starts after a scan is due no sooner than
``now + shortest_timeout``. The keeper therefore sleeps until the earliest due time it
saw, or ``now + shortest_timeout``, whichever comes first, and cannot wake late.

The minimum receive rate (``Timeouts.min_receive_rate``) is not a deadline but a
measurement, and it rides on the same scan. Each connection keeps a checkpoint -- when
its current window began and ``bytes_received`` then (see
:meth:`~triosrv.lowlevel.ConnectionRecord.receive_rate_below`) -- which nothing on the
hot path touches: no clock read per receive. Once every window (a *rate tick*) the scan
compares each connection's bytes since its checkpoint with ``rate * elapsed`` and moves
the checkpoint on. All connections are measured at the same ticks, so the rate costs one
extra wake-up per window whatever the number of connections; a connection that began
after the previous tick is left for the next one, so every measured window lasts between
one and two windows.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping

import trio

from ._config import Timeouts
from ._isolation import rate_limited
from .lowlevel._record import ConnectionRecord

logger = logging.getLogger("triosrv")


class DeadlineKeeper:
    """Fires idle, write, lifetime and slow-receive timeouts for live connections.

    ``connections`` is the server's own mapping of live connections (shared, not
    copied). Fired timeouts are counted in ``fired`` by kind.
    """

    def __init__(self, timeouts: Timeouts, connections: Mapping[int, ConnectionRecord]) -> None:
        self.timeouts = timeouts
        self.connections = connections
        self.fired: Counter[str] = Counter()
        windows = [t for t in (timeouts.idle, timeouts.write, timeouts.lifetime) if t]
        rate = timeouts.min_receive_rate
        if rate is not None:
            windows.append(timeouts.min_receive_rate_window)
        self._window = min(windows) if windows else None
        self._rate = rate or 0.0
        # The previous rate tick and the next one (see the module docstring).
        self._rate_tick = -math.inf
        self._rate_due = -math.inf if rate is not None else math.inf

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
        rate_tick = now >= self._rate_due
        for conn in self.connections.values():
            if conn.timed_out is not None:
                continue
            due, kind = conn.next_timeout(timeouts)
            if due <= now:
                self.fired[kind] += 1
                _expire(conn, kind, timeouts)
            elif rate_tick and conn.receive_rate_below(self._rate, self._rate_tick, now):
                self.fired["slow_receive"] += 1
                _expire(conn, "slow_receive", timeouts)
            elif due < wake:
                wake = due
        if rate_tick:
            self._rate_tick = now
            self._rate_due = now + timeouts.min_receive_rate_window
        return min(wake, self._rate_due)


def _expire(conn: ConnectionRecord, kind: str, timeouts: Timeouts) -> None:
    # The keeper serves every connection: one that fails to stop (a backend's bug)
    # is logged and left to its other limits, and the keeper goes on with the rest
    # (the isolation rule, _isolation.py).
    try:
        conn.expire(kind, timeouts)
    except Exception:
        logger.exception(
            "deadline keeper: could not stop connection %s on its %s timeout",
            getattr(conn, "id", "?"),
            kind,
            extra=rate_limited("keeper_error"),
        )
