"""Attacks made of complete exchanges: half-close, garbage, churn.

Each exchange connects, sends while reading, and ends in one of a few statuses:
``done`` (we got the whole echo), ``answered`` (any reply, for ``--expect any``),
``eof``/``reset`` (the server ended it), ``timeout``, or ``connect <why>``. In echo
mode the bytes that came back are compared with the bytes sent, exactly.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator

import trio

from ._attack import AttackContext, Outcome, rate, run_many
from ._canary import percentile
from ._client import describe, open_stream

# Exchanges in flight at once, and at most per attack (each also stops at its deadline).
CONCURRENCY = 8
MAX_EXCHANGES = 2000
CHURN_CONCURRENCY = 16
HALF_CLOSE_MAX_BYTES = 256 * 1024
GARBAGE_MAX_BYTES = 64 * 1024
# Byte strings that break naive parsers, sent first by some garbage exchanges.
NASTY_PREFIXES = (
    b"\x00" * 64,
    b"\r\n" * 64,
    b"\xff\xfe\xfd\xfc",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello's start
    b"PROXY TCP4 999.1.1.1 1.1.1.1 99999 0\r\n",
    b"GET /" + b"A" * 8192 + b" HTTP/1.1\r\n",
    "\u202e\U0001f4a5".encode() * 16,
)


def exchange_timeout(ctx: AttackContext) -> float:
    """How long one exchange may take: a few canary stalls (3 s by default)."""
    return 3 * ctx.config.stall


async def exchange(
    ctx: AttackContext,
    payload: bytes,
    *,
    chunk_sizes: Iterable[int],
    half_close: bool,
    want: int | None,
) -> tuple[str, bytes]:
    """Send ``payload`` in ``chunk_sizes`` while reading; return (status, received).

    After sending, ``half_close`` sends EOF. Reading stops at EOF or reset, or once
    ``want`` bytes (if not None) arrived: ``done`` when ``want`` is the payload's
    length, else ``answered``.
    """
    timeout = exchange_timeout(ctx)
    try:
        stream = await open_stream(ctx.target, timeout=timeout)
    except (OSError, trio.TooSlowError) as exc:
        return f"connect {describe(exc)}", b""
    received = bytearray()
    status = "timeout"
    async with stream:
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send, stream, payload, iter(chunk_sizes), half_close)
                status = await _receive(stream, received, want, len(payload))
                nursery.cancel_scope.cancel()
    return status, bytes(received)


async def _send(
    stream: trio.SocketStream, payload: bytes, sizes: Iterator[int], half_close: bool
) -> None:
    view = memoryview(payload)
    start = 0
    try:
        while start < len(payload):
            size = next(sizes, 65536)
            await stream.send_all(view[start : start + size])
            start += size
        if half_close:
            await stream.send_eof()
    except trio.BrokenResourceError:
        return  # the server reset us: the receiving side reports it


async def _receive(
    stream: trio.SocketStream, received: bytearray, want: int | None, length: int
) -> str:
    while True:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError as exc:
            return describe(exc)
        if not data:
            return "eof"
        received += data
        if want is not None and len(received) >= want:
            return "done" if want == length else "answered"


def _random_chunks(rng_seed: int, max_size: int) -> Iterator[int]:
    rng = random.Random(rng_seed)
    while True:
        yield rng.randint(1, max_size)


def _judge(outcome: Outcome, statuses: Counter[str], ok: int, started: int, what: str) -> None:
    outcome.figures.update(exchanges=started, ok=ok, statuses=dict(statuses))
    described = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
    detail = f" ({described})" if described else ""
    outcome.server_did = f"{ok}/{started} {what}{detail}" if started else "no exchange ran"
    if started and ok < started:
        outcome.problems.append(f"{started - ok}/{started} exchanges failed: {described}")


async def half_close(ctx: AttackContext) -> Outcome:
    """Send, shut down our writing side, and expect the rest of the echo, then EOF."""
    outcome, statuses, rng = Outcome(), Counter[str](), ctx.rng()
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        payload = rng.randbytes(rng.randint(1, HALF_CLOSE_MAX_BYTES))
        status, received = await exchange(
            ctx, payload, chunk_sizes=iter(()), half_close=True, want=None
        )
        if ctx.config.expect == "echo" and status == "eof" and received != payload:
            status = "short echo" if payload.startswith(received) else "wrong echo"
        statuses[status] += 1
        ok += status in (("eof",) if ctx.config.expect == "echo" else ("eof", "reset"))

    started = await run_many(MAX_EXCHANGES, CONCURRENCY, ctx.deadline, one)
    _judge(outcome, statuses, ok, started, "echoed in full then closed after our EOF")
    return outcome


async def garbage(ctx: AttackContext) -> Outcome:
    """Random bytes (some starting with parser-breaking prefixes) in random chunks.

    In echo mode every byte must come back exactly; in any mode the figures only say
    what the server did (answered, closed, reset, or kept waiting).
    """
    outcome, statuses, rng = Outcome(), Counter[str](), ctx.rng()
    echo = ctx.config.expect == "echo"
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        prefix = NASTY_PREFIXES[i % len(NASTY_PREFIXES)] if i % 2 else b""
        payload = prefix + rng.randbytes(rng.randint(1, GARBAGE_MAX_BYTES))
        status, received = await exchange(
            ctx,
            payload,
            chunk_sizes=_random_chunks(rng.getrandbits(32), 4096),
            half_close=not echo,
            want=len(payload) if echo else 1,
        )
        if echo and status == "done" and received != payload:
            status = "wrong echo"
        statuses[status] += 1
        ok += status == "done" if echo else not status.startswith("connect")

    started = await run_many(MAX_EXCHANGES, CONCURRENCY, ctx.deadline, one)
    _judge(outcome, statuses, ok, started, "echoed exactly" if echo else "handled")
    return outcome


async def churn(ctx: AttackContext) -> Outcome:
    """Thousands of short connections: connect, one small exchange, close."""
    outcome, statuses = Outcome(), Counter[str]()
    echo = ctx.config.expect == "echo"
    latencies: list[float] = []

    async def one(i: int) -> None:
        payload = b"churn %09d\n" % i
        start = trio.current_time()
        status, received = await exchange(
            ctx,
            payload,
            chunk_sizes=iter(()),
            half_close=not echo,
            want=len(payload) if echo else 1,
        )
        if echo and status == "done" and received != payload:
            status = "wrong echo"
        if status in ("done", "answered") or (not echo and status == "eof"):
            status = "ok"
            latencies.append(trio.current_time() - start)
        statuses[status] += 1

    started = await run_many(ctx.config.churn, CHURN_CONCURRENCY, ctx.deadline, one)
    ok = statuses.pop("ok", 0)
    _judge(outcome, statuses, ok, started, "short connections served")
    p99 = percentile(latencies, 0.99)
    outcome.figures.update(
        connections_per_second=rate(started, ctx.elapsed()),
        exchange_p99_ms=None if p99 is None else round(p99 * 1000, 2),
    )
    return outcome
