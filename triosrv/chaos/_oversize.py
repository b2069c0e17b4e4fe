"""The oversize attack: one 64 MiB message on one connection.

The message is never held in memory whole: it is 1 MiB pieces of one random block,
each piece stamped with its index so that a lost, repeated or reordered piece cannot
pass for the right one, and the echo is compared as it arrives. A server may answer it
in full (echo), or close us once it is over its own limit -- both are fine. What fails
is a wrong byte, or the server going silent: no progress for three canary stalls.
"""

from __future__ import annotations

import random

import attrs
import trio

from ._attack import AttackContext, Outcome
from ._client import describe, open_stream

PIECE = 1024 * 1024
SEND_CHUNK = 256 * 1024
MIB = 1024 * 1024
WATCHDOG_TICK = 0.1
MAX_TICKS = 10_000_000


class Message:
    """A long message made of stamped pieces of one random block; compared by position."""

    def __init__(self, seed: int, total: int) -> None:
        self.total = total
        self._block = random.Random(seed).randbytes(PIECE)
        self._index = -1
        self._piece = b""

    def piece(self, index: int) -> bytes:
        """Piece ``index``: its 8-byte big-endian index, then the block's rest."""
        if index != self._index:
            self._index, self._piece = index, index.to_bytes(8, "big") + self._block[8:]
        return self._piece

    def chunks(self) -> list[tuple[int, int]]:
        """(start, end) of each send, SEND_CHUNK bytes at most."""
        return [(s, min(s + SEND_CHUNK, self.total)) for s in range(0, self.total, SEND_CHUNK)]

    def slice(self, start: int, end: int) -> bytes:
        """Bytes ``start:end`` of the message (within one piece, or across two)."""
        out = bytearray()
        while start < end:
            index, offset = divmod(start, PIECE)
            take = min(end - start, PIECE - offset)
            out += self.piece(index)[offset : offset + take]
            start += take
        return bytes(out)


@attrs.define
class _Transfer:
    sent: int = 0
    received: int = 0
    status: str = "timeout"
    last_progress: float = 0.0
    eof_sent: bool = False


async def oversize(ctx: AttackContext) -> Outcome:
    """Send one ``oversize_bytes`` message while reading; expect it back or a close."""
    outcome = Outcome()
    config = ctx.config
    message = Message(ctx.rng().getrandbits(64), config.oversize_bytes)
    echo = config.expect == "echo"
    try:
        stream = await open_stream(ctx.target, timeout=3 * config.stall)
    except (OSError, trio.TooSlowError) as exc:
        outcome.problems.append(f"connect {describe(exc)}")
        outcome.server_did = "refused the connection"
        return outcome
    t = _Transfer(last_progress=trio.current_time())
    async with stream:
        with trio.move_on_after(config.oversize_time):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send, stream, message, t, not echo)
                nursery.start_soon(_watchdog, t, 3 * config.stall, nursery.cancel_scope)
                t.status = await _receive(stream, message, t, echo)
                nursery.cancel_scope.cancel()
    _report(ctx, outcome, message, t)
    return outcome


async def _send(stream: trio.SocketStream, message: Message, t: _Transfer, eof: bool) -> None:
    try:
        for start, end in message.chunks():
            await stream.send_all(message.slice(start, end))
            t.sent = end
            t.last_progress = trio.current_time()
        if eof:
            await stream.send_eof()
            t.eof_sent = True
    except trio.BrokenResourceError:
        return  # the receiving side reports the reset


async def _watchdog(t: _Transfer, limit: float, scope: trio.CancelScope) -> None:
    for _ in range(MAX_TICKS):
        await trio.sleep(WATCHDOG_TICK)
        if trio.current_time() - t.last_progress > limit:
            t.status = "stalled"
            scope.cancel()
            return


async def _receive(stream: trio.SocketStream, message: Message, t: _Transfer, echo: bool) -> str:
    while not echo or t.received < message.total:
        try:
            data = await stream.receive_some(PIECE)
        except trio.BrokenResourceError as exc:
            return describe(exc)
        if not data:
            return "eof"
        if echo and message.slice(t.received, t.received + len(data)) != data:
            return f"wrong echo at byte {t.received}"
        t.received += len(data)
        t.last_progress = trio.current_time()
    return "done"


def _report(ctx: AttackContext, outcome: Outcome, message: Message, t: _Transfer) -> None:
    mib = message.total / MIB
    took = f"{t.sent / MIB:.1f} of {mib:.0f} MiB"
    seconds = ctx.elapsed()
    outcome.figures.update(
        bytes=message.total, sent=t.sent, received=t.received, seconds=round(seconds, 2)
    )
    if t.status == "done":
        outcome.server_did = f"echoed all {mib:.0f} MiB exactly in {seconds:.2f} s"
    elif t.status in ("eof", "reset"):
        outcome.server_did = (
            f"took {took}, answered {t.received / MIB:.1f} MiB, then closed us ({t.status})"
        )
    elif t.status == "stalled" and t.eof_sent:
        outcome.server_did = f"took all {mib:.0f} MiB, then kept the connection open"
    else:
        outcome.server_did = f"took {took}, answered {t.received / MIB:.1f} MiB: {t.status}"
        outcome.problems.append(
            f"{t.status}: the server neither finished nor closed (after {seconds:.1f} s)"
            if t.status in ("stalled", "timeout")
            else t.status
        )
