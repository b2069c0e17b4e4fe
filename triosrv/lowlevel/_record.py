"""The record a server keeps of every live connection, whatever serves it.

:class:`ConnectionRecord` carries what every backend must show -- ``id``, ``peer``,
``local``, ``started_at``, the byte counters, ``draining`` -- and the two fields the
server's deadline keeper reads: what the connection is waiting for (``waiting``) and
since when (``waiting_since``). The code that serves the connection stores those two
when a wait starts, a float store and nothing more; the keeper compares them with the
timeouts and calls :meth:`ConnectionRecord.expire` when one is due, which each kind of
connection turns into "stop now" its own way (:meth:`ConnectionRecord.stop`). The
keeper's minimum-receive-rate checkpoint lives here too, behind
:meth:`ConnectionRecord.receive_rate_below`. The handler's
:class:`~triosrv.Connection` is a record as well, so these fields are defined once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._config import Timeouts

#: What a connection is waiting for (``ConnectionRecord.waiting``), on every backend.
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
    """One live connection as the server, its deadline keeper and
    ``Server.connections()`` see it, on every backend.

    :class:`~triosrv.Connection` (what a handler gets) is one, and so is each record a
    backend keeps of a connection it serves on a raw fd. ``id`` is set by the server
    when it starts tracking the connection; ``peer`` and ``local`` are ``HOST:PORT``
    strings (``unix`` for Unix peers); ``started_at`` is in ``trio.current_time()``
    seconds; ``timed_out`` names the timeout that ended it.

    The code that serves the connection keeps ``waiting`` (:data:`NOT_WAITING`,
    :data:`RECEIVING` or :data:`SENDING`) and ``waiting_since`` up to date when a wait
    starts and ends: two plain stores, the whole cost of timeouts on the hot path. The
    keeper reads them (:meth:`next_timeout`) and calls :meth:`expire` when one is due;
    a subclass says how its connection stops in :meth:`stop`.
    """

    __slots__ = (
        "_expired",
        "_rate_mark",
        "_rate_since",
        "bytes_received",
        "bytes_sent",
        "draining",
        "id",
        "local",
        "peer",
        "started_at",
        "waiting",
        "waiting_since",
    )

    def __init__(
        self, *, peer: str, local: str, started_at: float, waiting: int = RECEIVING
    ) -> None:
        self.id = 0
        self.peer = peer
        self.local = local
        self.started_at = started_at
        self.bytes_received = 0
        self.bytes_sent = 0
        self.draining = False
        self.waiting = waiting
        self.waiting_since = started_at
        self._expired: str | None = None
        # The keeper's minimum-rate checkpoint (see receive_rate_below).
        self._rate_since = started_at
        self._rate_mark = 0

    def __repr__(self) -> str:
        return f"<triosrv {type(self).__name__} {self.id} from {self.peer}>"

    @property
    def timed_out(self) -> str | None:
        """The kind of timeout that ended this connection, or None."""
        return self._expired

    def next_timeout(self, timeouts: Timeouts) -> tuple[float, str]:
        """The earliest moment one of ``timeouts`` could fire now, and its kind
        (``math.inf`` and ``""`` when none applies); see :func:`next_deadline`."""
        return next_deadline(self.started_at, self.waiting, self.waiting_since, timeouts)

    def expire(self, kind: str, timeouts: Timeouts) -> None:
        """The ``kind`` timeout fired (the keeper, or the handshake deadline, says so):
        note it in :attr:`timed_out` and :meth:`stop` the connection."""
        self._expired = kind
        self.stop()

    def stop(self) -> None:
        """End the connection as soon as possible, from the trio thread; each kind of
        connection does it its own way (cancel a scope, close an fd in the loop, shut a
        socket down under a thread). Must not block."""
        raise NotImplementedError

    def receive_rate_below(self, rate: float, previous_tick: float, now: float) -> bool:
        """At the keeper's rate tick ``now``: did the peer send under ``rate`` bytes per
        second over this connection's window (since its checkpoint)?

        A window counts only if it began at or before ``previous_tick`` (a connection
        that began after it is left for the next tick: every measured window lasts
        between one and two ticks), and only if it ends while the server waits for the
        peer's bytes; a silent window is the idle timeout's business. Unless it answers
        True, the checkpoint moves on to ``now``. See ``triosrv/_deadlines.py``.
        """
        if self._rate_since > previous_tick:
            return False  # began after the previous tick: a partial window
        received = self.bytes_received - self._rate_mark
        wanted = rate * (now - self._rate_since)
        if self.waiting == RECEIVING and 0 < received < wanted:
            return True
        self._rate_since = now
        self._rate_mark = self.bytes_received
        return False
