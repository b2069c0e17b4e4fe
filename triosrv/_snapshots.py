"""Frozen snapshots of live connections, for status output, metrics and programs.

A snapshot is built from any connection object that has the attributes of
:class:`triosrv.Connection` (``id``, ``peer``, ``local``, ``started_at``,
``bytes_received``, ``bytes_sent``, ``draining``) and, optionally, the deadline
bookkeeping the deadline keeper reads (``waiting``, ``waiting_since``,
``next_timeout(timeouts)``, as :class:`triosrv.lowlevel.ConnectionRecord` has them).
Every backend's connections qualify; an object without the deadline bookkeeping simply
reports no wait and no deadline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from ._config import Timeouts

# The values of ConnectionRecord.waiting (lowlevel/_record.py): not waiting, receive, send.
_WAIT_NAMES = {1: "receive", 2: "send"}


@attrs.frozen(kw_only=True)
class ConnectionSnapshot:
    """One live connection at one moment.

    - ``age``: seconds since it was accepted.
    - ``waiting``: ``"receive"`` or ``"send"`` while an operation waits for the peer,
      else None (the handler is running, or between operations).
    - ``idle_for``: how long the current wait has lasted (0 when not waiting).
    - ``next_deadline`` / ``deadline_in``: the kind of the timeout that would fire
      first if nothing happens (``"idle"``, ``"write"``, ``"lifetime"``) and the
      seconds left until it does (negative: overdue, about to fire); None when no
      timeout applies.
    """

    id: int
    peer: str
    local: str
    age: float
    idle_for: float
    waiting: str | None
    bytes_received: int
    bytes_sent: int
    draining: bool
    next_deadline: str | None
    deadline_in: float | None


def snapshot_connection(conn: Any, timeouts: Timeouts | None, now: float) -> ConnectionSnapshot:
    """A snapshot of ``conn`` at ``now`` (a ``trio.current_time()`` value)."""
    waiting = _WAIT_NAMES.get(getattr(conn, "waiting", 0))
    idle_for = now - conn.waiting_since if waiting is not None else 0.0
    kind: str | None = None
    left: float | None = None
    next_deadline = getattr(conn, "next_timeout", None)
    if timeouts is not None and next_deadline is not None:
        due, found = next_deadline(timeouts)
        if found and not math.isinf(due):
            kind, left = found, due - now
    return ConnectionSnapshot(
        id=conn.id,
        peer=conn.peer,
        local=conn.local,
        age=now - conn.started_at,
        idle_for=idle_for,
        waiting=waiting,
        bytes_received=conn.bytes_received,
        bytes_sent=conn.bytes_sent,
        draining=bool(conn.draining),
        next_deadline=kind,
        deadline_in=left,
    )


def connection_snapshots(server: Any, *, now: float | None = None) -> list[ConnectionSnapshot]:
    """Snapshots of every live connection of ``server``, by id.

    The same as ``server.connections()``; takes any object with the method
    ``live_connections()`` and a ``config.timeouts``. Call it from inside the server's
    trio run (``now`` defaults to ``trio.current_time()``).
    """
    when = trio.current_time() if now is None else now
    timeouts = getattr(getattr(server, "config", None), "timeouts", None)
    conns: Iterable[Any] = server.live_connections()
    return sorted((snapshot_connection(conn, timeouts, when) for conn in conns), key=lambda s: s.id)
