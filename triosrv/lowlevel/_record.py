"""The record a server keeps of one connection that it serves on a raw fd.

:class:`ConnectionRecord` carries what every backend must show -- ``id``, ``peer``,
``local``, ``started_at``, the byte counters, ``draining`` -- and the two fields the
server's deadline keeper reads: what the connection is waiting for (``_waiting``) and
since when (``_waiting_since``). The code that serves the connection stores those two
when a wait starts, a float store and nothing more; the keeper compares them with the
timeouts and calls :meth:`ConnectionRecord._expire` when one is due, which each backend
turns into "stop this connection now" its own way (cancel a scope, close an fd in the
loop, shut a socket down under a thread). The keeper also keeps its minimum-receive-rate
checkpoint here (``_rate_since``, ``_rate_mark``); nothing else touches it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._config import Timeouts

# What a connection is waiting for (``_waiting``), on every backend.
NOT_WAITING, RECEIVING, SENDING = 0, 1, 2


def next_deadline(
    started_at: float, waiting: int, waiting_since: float, timeouts: Timeouts
) -> tuple[float, str]:
    """The earliest moment one of ``timeouts`` could fire for a connection, and its kind.

    ``math.inf`` and ``""`` when none applies. Shared by every backend's connection
    objects, so that "idle", "write" and "lifetime" mean the same thing everywhere.
    """
    due, kind = math.inf, ""
    if timeouts.lifetime is not None:
        due, kind = started_at + timeouts.lifetime, "lifetime"
    if waiting == RECEIVING and timeouts.idle is not None:
        idle_due = waiting_since + timeouts.idle
        if idle_due < due:
            due, kind = idle_due, "idle"
    elif waiting == SENDING and timeouts.write is not None:
        write_due = waiting_since + timeouts.write
        if write_due < due:
            due, kind = write_due, "write"
    return due, kind


class ConnectionRecord:
    """One live connection as the server and ``Server.connections()`` see it.

    ``id`` is set by the server when it starts tracking the connection; ``peer`` and
    ``local`` are ``HOST:PORT`` strings (``unix`` for Unix peers); ``started_at`` is in
    ``trio.current_time()`` seconds. ``timed_out`` names the timeout that ended it.
    """

    __slots__ = (
        "_expired",
        "_rate_mark",
        "_rate_since",
        "_waiting",
        "_waiting_since",
        "bytes_received",
        "bytes_sent",
        "draining",
        "id",
        "local",
        "peer",
        "started_at",
    )

    def __init__(self, *, peer: str, local: str, started_at: float) -> None:
        self.id = 0
        self.peer = peer
        self.local = local
        self.started_at = started_at
        self.bytes_received = 0
        self.bytes_sent = 0
        self.draining = False
        self._waiting = RECEIVING
        self._waiting_since = started_at
        self._expired: str | None = None
        # The keeper's minimum-rate checkpoint (see triosrv/_deadlines.py).
        self._rate_since = started_at
        self._rate_mark = 0

    def __repr__(self) -> str:
        return f"<triosrv {type(self).__name__} {self.id} from {self.peer}>"

    @property
    def timed_out(self) -> str | None:
        """The kind of timeout that ended this connection, or None."""
        return self._expired

    def _next_deadline(self, timeouts: Timeouts) -> tuple[float, str]:
        """The earliest moment a timeout could fire now, and its kind."""
        return next_deadline(self.started_at, self._waiting, self._waiting_since, timeouts)

    def _expire(self, kind: str, timeouts: Timeouts) -> None:
        """Called by the deadline keeper: ``kind`` fired; stop the connection."""
        self._expired = kind
        self._stop()

    def _stop(self) -> None:
        """End the connection as soon as possible (from the trio thread)."""
        raise NotImplementedError
