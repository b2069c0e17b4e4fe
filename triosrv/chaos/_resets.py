"""Attacks that abort connections with a TCP reset (SO_LINGER 0) at awkward moments.

``reset-mid-read`` sends part of a request and resets while the server is reading;
``reset-mid-write`` sends until the server is stuck writing the reply to us (our
receive window is small and we never read), then resets. A server that mishandles
ECONNRESET on either path leaks the connection, logs a crash, or dies; the canary and
the recovery probe see the last two, the figures count what we did.
"""

from __future__ import annotations

from collections import Counter

import trio

from ..lowlevel._fd import close_with_reset as abort
from ._attack import AttackContext, Outcome, run_many
from ._client import describe, open_socket, queued_bytes, send_quietly

# At most this many resets per attack (it also stops at its deadline).
RESETS = 5000
CONCURRENCY = 4
MID_READ_MAX_BYTES = 32 * 1024
# A small receive window that we never read from: a reply larger than it leaves the
# server with bytes it cannot send. Once this much waits in our queue, our window is
# (nearly) full and the server is mid-write -- blocked, or its kernel is.
MID_WRITE_RCVBUF = 16 * 1024
MID_WRITE_QUEUED = 16 * 1024
MID_WRITE_BYTES = 256 * 1024
MID_WRITE_WAIT = 0.5
POLL = 0.005


async def _connect(
    ctx: AttackContext, statuses: Counter[str], *, rcvbuf: int | None = None
) -> trio.socket.SocketType | None:
    try:
        return await open_socket(ctx.target, rcvbuf=rcvbuf, timeout=3 * ctx.config.stall)
    except (OSError, trio.TooSlowError) as exc:
        statuses[f"connect {describe(exc)}"] += 1
        return None


def _finish(ctx: AttackContext, outcome: Outcome, statuses: Counter[str], started: int) -> None:
    described = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
    outcome.server_did = f"took {started} resets ({described})" if started else "no reset sent"
    outcome.figures.update(resets=started, statuses=dict(statuses))
    failed = sum(n for status, n in statuses.items() if status.startswith("connect"))
    if failed:
        outcome.problems.append(f"{failed}/{started} connects failed: {described}")


async def reset_mid_read(ctx: AttackContext) -> Outcome:
    """Connect, send part of a request, reset while the server is reading it."""
    outcome, statuses, rng = Outcome(), Counter[str](), ctx.rng()

    async def one(i: int) -> None:
        sock = await _connect(ctx, statuses)
        if sock is None:
            return
        try:
            why = await send_quietly(sock, rng.randbytes(rng.randint(1, MID_READ_MAX_BYTES)))
            if why is not None:
                statuses[f"server {why} first"] += 1
                return
            # Let the server start reading, sometimes; reset at once other times.
            if i % 2:
                await trio.sleep(rng.random() * 0.005)
            statuses["reset mid-read"] += 1
        finally:
            abort(sock)

    started = await run_many(RESETS, CONCURRENCY, ctx.deadline, one)
    _finish(ctx, outcome, statuses, started)
    return outcome


async def reset_mid_write(ctx: AttackContext) -> Outcome:
    """Send without reading until the server is stuck writing to us, then reset."""
    outcome, statuses = Outcome(), Counter[str]()

    async def one(i: int) -> None:
        sock = await _connect(ctx, statuses, rcvbuf=MID_WRITE_RCVBUF)
        if sock is None:
            return
        try:
            statuses[await _fill(sock)] += 1
        finally:
            abort(sock)

    started = await run_many(RESETS // 5, CONCURRENCY, ctx.deadline, one)
    _finish(ctx, outcome, statuses, started)
    return outcome


async def _fill(sock: trio.socket.SocketType) -> str:
    # Send a request whose echo cannot fit our window, then wait until the server has
    # filled the window; say whether it did.
    with trio.move_on_after(MID_WRITE_WAIT):
        why = await send_quietly(sock, b"w" * MID_WRITE_BYTES)
        if why is not None:
            return f"server {why} first"
    with trio.move_on_after(MID_WRITE_WAIT):
        for _ in range(int(MID_WRITE_WAIT / POLL) + 1):
            if queued_bytes(sock) >= MID_WRITE_QUEUED:
                return "reset mid-write"
            await trio.sleep(POLL)
    return "reset, server never filled our window"
