"""What every attack shares: its context, its outcome, and the bookkeeping of connections.

An attack is ``async def attack(ctx: AttackContext) -> Outcome``. It must return by
``ctx.deadline`` (or, for the ones that need longer, by its own documented bound), close
every socket it opened, and describe in ``Outcome.server_did`` what the server did to
it. ``Outcome.problems`` lists what makes the scenario fail on its own account, beside
the canary's verdict.
"""

from __future__ import annotations

import math
import random
import resource
import statistics
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable

import attrs
import trio

from .._platform import open_fd_numbers
from ._client import describe, open_socket
from ._config import ChaosConfig, Target

# Fds the chaos process keeps for itself (canary, probes, trio) beyond the attack's.
FD_MARGIN = 64


@attrs.frozen(kw_only=True)
class AttackContext:
    """What an attack is told: where, how hard, and until when (trio clock)."""

    name: str
    target: Target
    config: ChaosConfig
    start: float

    @property
    def deadline(self) -> float:
        """When the attack should stop: ``start + config.duration``."""
        return self.start + self.config.duration

    def rng(self) -> random.Random:
        """A random generator seeded by the run's seed and the scenario's name."""
        return random.Random(self.config.seed * 1_000_003 + zlib.crc32(self.name.encode()))

    def elapsed(self) -> float:
        """Seconds since the attack started."""
        return trio.current_time() - self.start


@attrs.define
class Outcome:
    """What an attack saw: a one-line ``server_did``, figures, and its own failures."""

    server_did: str = ""
    figures: dict[str, object] = attrs.field(factory=dict)
    problems: list[str] = attrs.field(factory=list)


@attrs.define
class Held:
    """One attack connection held open: whether it connected and how it ended."""

    failed: str | None = None  # why connect() failed
    closed_after: float | None = None  # seconds from the attack's start
    how: str = ""  # "eof" or "reset" when the server ended it
    sent: int = 0
    received: int = 0
    last_sent: float | None = None  # seconds from the attack's start
    # The longest silence between two of our sends that the server let pass: an idle
    # timeout is longer than this, or it would have closed the connection in it.
    longest_gap: float = 0.0

    def ended(self, ctx: AttackContext, how: str) -> None:
        if self.closed_after is None:
            self.closed_after = ctx.elapsed()
            self.how = how


async def connect_held(
    ctx: AttackContext, held: Held, *, rcvbuf: int | None = None
) -> trio.socket.SocketType | None:
    """Connect for ``held``; on failure record why and return None."""
    timeout = max(0.01, ctx.deadline - trio.current_time())
    try:
        return await open_socket(ctx.target, rcvbuf=rcvbuf, timeout=timeout)
    except (OSError, trio.TooSlowError) as exc:
        held.failed = describe(exc)
        return None


def summarize_held(ctx: AttackContext, held: list[Held], outcome: Outcome) -> None:
    """Fill ``outcome`` with what the server did to a set of held connections."""
    total = len(held)
    failed = Counter(h.failed for h in held if h.failed is not None)
    closed = [h for h in held if h.failed is None and h.closed_after is not None]
    kept = total - sum(failed.values()) - len(closed)
    parts = []
    if closed:
        times = [h.closed_after for h in closed if h.closed_after is not None]
        hows = Counter(h.how for h in closed)
        parts.append(
            f"closed {len(closed)}/{total} after {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}; "
            + ", ".join(f"{how} {n}" for how, n in sorted(hows.items()))
            + ")"
        )
        _closed_figures(outcome, times)
    if kept:
        parts.append(f"kept {kept}/{total} open for the whole {ctx.config.duration:g} s")
    if failed:
        parts.append(
            f"{sum(failed.values())}/{total} could not connect ("
            + ", ".join(f"{why} {n}" for why, n in sorted(failed.items()))
            + ")"
        )
    outcome.server_did = "; ".join(parts) or "nothing to report"
    outcome.figures.update(
        connections=total,
        closed_by_server=len(closed),
        kept_open=kept,
        connect_failed=sum(failed.values()),
        bytes_sent=sum(h.sent for h in held),
        bytes_received=sum(h.received for h in held),
    )


def _closed_figures(outcome: Outcome, times: list[float]) -> None:
    outcome.figures.update(
        closed_after_median=round(statistics.median(times), 3),
        closed_after_min=round(min(times), 3),
        closed_after_max=round(max(times), 3),
    )


def fd_budget(wanted: int) -> int:
    """How many of ``wanted`` sockets this process can open (RLIMIT_NOFILE)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    in_use = len(open_fd_numbers())
    return max(0, min(wanted, soft - in_use - FD_MARGIN))


async def run_many(
    count: int,
    concurrency: int,
    deadline: float,
    job: Callable[[int], Awaitable[None]],
) -> int:
    """Run ``job(i)`` for i in 0..count-1, ``concurrency`` at a time, starting none
    after ``deadline``; return how many were started. Each job bounds its own time.
    """
    limiter = trio.CapacityLimiter(concurrency)
    started = 0

    async def one(i: int) -> None:
        try:
            await job(i)
        finally:
            limiter.release_on_behalf_of(i)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            await limiter.acquire_on_behalf_of(i)
            if trio.current_time() >= deadline:
                limiter.release_on_behalf_of(i)
                break
            started += 1
            nursery.start_soon(one, i)
    return started


def rate(count: int, seconds: float) -> float:
    """``count / seconds``, rounded, 0 for an empty interval."""
    return round(count / seconds, 1) if seconds > 0 and math.isfinite(seconds) else 0.0
