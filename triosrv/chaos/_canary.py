"""The canary: a well-behaved client whose experience is what a chaos run judges.

It does two things at once while an attack runs:

- echo round trips on one long-lived connection, a few milliseconds apart, each timed;
  one that takes longer than ``stall`` seconds is abandoned and counted as a stall (the
  connection is then replaced, since a late reply would be mistaken for the next one);
- every ``PROBE_INTERVAL`` a *new* connection, one round trip, close: whether a
  newcomer is served at all, which the long-lived connection cannot tell.

Everything is recorded in a :class:`CanaryLog` with its ``time.monotonic()`` (one
clock for every process on the machine), so the runner can compare the quiet window
before an attack with the attack itself. The runner runs the canary in a process of its
own (``_canary_process.py``): in the attacking process it would share one event loop
with thousands of attack tasks and measure the attacker's own backlog, not the server.
"""

from __future__ import annotations

import math
import time
from typing import Any

import attrs
import trio

from ._client import describe, open_stream
from ._config import Target

ROUND_TRIP_INTERVAL = 0.005
PROBE_INTERVAL = 0.25
# Upper bounds on the loops, on top of the runner's cancel scope (time).
MAX_ROUND_TRIPS = 1_000_000
MAX_PROBES = 100_000


@attrs.frozen(kw_only=True)
class CanaryFigures:
    """The canary over one window of time; latencies in seconds (None: no sample)."""

    round_trips: int
    p50: float | None
    p99: float | None
    max: float | None
    stalls: int
    errors: tuple[str, ...]
    probes: int
    probes_failed: int
    probe_errors: tuple[str, ...]


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@attrs.define
class CanaryLog:
    """What a canary recorded; times are ``time.monotonic()``, latencies seconds."""

    samples: list[tuple[float, float]] = attrs.field(factory=list)  # (start, seconds)
    stalls: list[float] = attrs.field(factory=list)
    errors: list[tuple[float, str]] = attrs.field(factory=list)
    # (start, end, None when served or why not); a probe belongs to every window it
    # overlaps: one still waiting when the attack starts is the attack's business too.
    probes: list[tuple[float, float, str | None]] = attrs.field(factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> CanaryLog:
        """The inverse of :meth:`to_dict`."""
        return cls(
            samples=[(float(a), float(b)) for a, b in doc["samples"]],
            stalls=[float(a) for a in doc["stalls"]],
            errors=[(float(a), str(b)) for a, b in doc["errors"]],
            probes=[
                (float(a), float(b), None if why is None else str(why))
                for a, b, why in doc["probes"]
            ],
        )

    def figures(self, start: float, end: float) -> CanaryFigures:
        """What the canary saw between ``start`` and ``end`` (``time.monotonic()``)."""
        latencies = [s for at, s in self.samples if start <= at < end]
        probes = [why for began, ended, why in self.probes if began < end and ended >= start]
        return CanaryFigures(
            round_trips=len(latencies),
            p50=percentile(latencies, 0.50),
            p99=percentile(latencies, 0.99),
            max=max(latencies, default=None),
            stalls=sum(1 for at in self.stalls if start <= at < end),
            errors=tuple(why for at, why in self.errors if start <= at < end),
            probes=len(probes),
            probes_failed=sum(1 for why in probes if why is not None),
            probe_errors=tuple(sorted({why for why in probes if why is not None})),
        )


class Canary:
    """Echo round trips and new-connection probes against ``target``, all recorded.

    ``expect="echo"`` checks each reply byte for byte; ``"any"`` accepts any reply.
    Run :meth:`run` with ``nursery.start`` (it returns once connected, and raises the
    connect error if the target cannot be reached) and :meth:`probe` with
    ``start_soon``; cancel them to stop. Each closes what it opened.
    """

    def __init__(self, target: Target, *, expect: str, stall: float) -> None:
        self.target = target
        self.expect = expect
        self.stall = stall
        self.log = CanaryLog()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Round trips on one connection until cancelled (or MAX_ROUND_TRIPS)."""
        stream: trio.SocketStream | None = await open_stream(self.target, timeout=self.stall)
        task_status.started()
        try:
            for seq in range(MAX_ROUND_TRIPS):
                if stream is None:
                    stream = await self._reconnect()
                if stream is not None and not await self._timed_round_trip(stream, seq):
                    await trio.aclose_forcefully(stream)
                    stream = None
                await trio.sleep(ROUND_TRIP_INTERVAL)
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async def _reconnect(self) -> trio.SocketStream | None:
        try:
            return await open_stream(self.target, timeout=self.stall)
        except (OSError, trio.TooSlowError) as exc:
            self.log.errors.append((time.monotonic(), f"reconnect: {describe(exc)}"))
            return None

    async def _timed_round_trip(self, stream: trio.SocketStream, seq: int) -> bool:
        # Returns False when the connection must be replaced.
        start = time.monotonic()
        with trio.move_on_after(self.stall) as scope:
            try:
                await self._round_trip(stream, seq)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
                self.log.errors.append((start, f"round trip: {describe(exc)}"))
                return False
        self.log.samples.append((start, time.monotonic() - start))
        if scope.cancelled_caught:
            self.log.stalls.append(start)
            return False
        return True

    async def _round_trip(self, stream: trio.SocketStream, seq: int) -> None:
        message = b"canary %010d\n" % seq
        await stream.send_all(message)
        received = b""
        while True:
            data = await stream.receive_some(len(message) - len(received))
            if not data:
                raise ValueError("eof")
            received += data
            if self.expect == "any":
                return
            if len(received) == len(message):
                break
        if received != message:
            raise ValueError(f"wrong echo {received[:40]!r}")

    async def probe(self) -> None:
        """A new connection and one round trip every PROBE_INTERVAL, until cancelled."""
        for seq in range(MAX_PROBES):
            start = trio.current_time()
            began = time.monotonic()
            why = await self.probe_once(seq)
            self.log.probes.append((began, time.monotonic(), why))
            await trio.sleep_until(start + PROBE_INTERVAL)

    async def probe_once(self, seq: int = 0) -> str | None:
        """One new connection, one round trip, close; None or why it failed."""
        try:
            with trio.fail_after(self.stall):
                async with await open_stream(self.target, timeout=self.stall) as stream:
                    await self._round_trip(stream, seq)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ValueError) as exc:
            return describe(exc) if not isinstance(exc, ValueError) else str(exc)
        return None
