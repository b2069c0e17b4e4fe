"""Fault injection for any trio stream: delay, drip, stall, abort, truncate.

:class:`FaultyStream` wraps a stream (a ``SocketStream``, one end of
``trio.testing.memory_stream_pair()``, a ``triosrv.Connection``...) and misbehaves as
its :class:`Faults` say. Waits are ``trio.sleep``, so under ``MockClock`` (pytest-trio's
``autojump_clock``) a stall of an hour costs nothing; the randomness (delays, drip
sizes) comes from ``Faults.seed`` alone, so a failing case replays exactly.

Byte-count triggers count the bytes that went *out* through the wrapper, except
``stall_receive_after`` which counts bytes that came in. A trigger fires once, at the
exact byte: a send that crosses it is split there.
"""

from __future__ import annotations

import math
import random
from typing import Any

import attrs
import trio

from ..lowlevel._fd import close_with_reset


def _count(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{attribute.name}: expected a byte count >= 0 or None, got {value!r}")


def _seconds(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{attribute.name}: expected seconds >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Faults:
    """What goes wrong on a :class:`FaultyStream`.

    - ``delay``: every send and receive first sleeps ``uniform(0, delay)`` seconds.
    - ``drip``: sends go out in pieces of 1..``drip`` bytes, ``drip_interval`` apart.
    - ``stall_after``: once this many bytes went out, the next send sleeps
      ``stall_for`` seconds (for ever by default: until cancelled) before going on.
    - ``stall_receive_after``: once this many bytes came in, the next receive sleeps
      ``stall_for`` -- a peer that stops reading.
    - ``abort_after``: once this many bytes went out, the stream is aborted: a TCP
      reset for a ``SocketStream`` (SO_LINGER 0), a plain close for others; that send
      and everything after raise ``trio.BrokenResourceError``.
    - ``truncate_after``: once this many bytes went out, the rest is dropped silently
      and EOF is sent (the peer sees a message cut short, then a clean end).
    """

    seed: int = 0
    delay: float = attrs.field(default=0.0, validator=_seconds)
    drip: int | None = attrs.field(default=None, validator=_count)
    drip_interval: float = attrs.field(default=0.0, validator=_seconds)
    stall_after: int | None = attrs.field(default=None, validator=_count)
    stall_receive_after: int | None = attrs.field(default=None, validator=_count)
    stall_for: float = attrs.field(default=math.inf, validator=_seconds)
    abort_after: int | None = attrs.field(default=None, validator=_count)
    truncate_after: int | None = attrs.field(default=None, validator=_count)

    @classmethod
    def random(cls, seed: int, *, max_bytes: int = 65536, max_delay: float = 0.1) -> Faults:
        """A random mix of one to three faults, all chosen from ``seed``."""
        rng = random.Random(seed)
        kinds = rng.sample(["delay", "drip", "stall", "abort", "truncate"], rng.randint(1, 3))
        fields: dict[str, object] = {"seed": seed}
        if "delay" in kinds:
            fields["delay"] = rng.uniform(0, max_delay)
        if "drip" in kinds:
            fields.update(drip=rng.randint(1, 64), drip_interval=rng.uniform(0, max_delay))
        if "stall" in kinds:
            key = rng.choice(["stall_after", "stall_receive_after"])
            fields.update({key: rng.randint(0, max_bytes), "stall_for": rng.uniform(0, 10)})
        if "abort" in kinds:
            fields["abort_after"] = rng.randint(0, max_bytes)
        elif "truncate" in kinds:
            fields["truncate_after"] = rng.randint(0, max_bytes)
        return cls(**fields)  # type: ignore[arg-type]  # keys are this class's fields


class FaultyStream(trio.abc.HalfCloseableStream):
    """``stream`` with :class:`Faults` injected; closing it closes ``stream``.

    ``sent`` and ``received`` count the bytes that really went through; ``aborted`` and
    ``truncated`` say whether those faults fired. ``send_eof`` needs a half-closeable
    ``stream`` (TypeError otherwise).
    """

    def __init__(self, stream: trio.abc.Stream, faults: Faults) -> None:
        self.stream = stream
        self.faults = faults
        self.sent = 0
        self.received = 0
        self.aborted = False
        self.truncated = False
        self._stalled = self._receive_stalled = False
        self._rng = random.Random(faults.seed)

    async def _delay(self) -> None:
        if self.faults.delay:
            await trio.sleep(self._rng.uniform(0, self.faults.delay))

    def _check_aborted(self) -> None:
        if self.aborted:
            raise trio.BrokenResourceError("aborted by fault injection")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``, misbehaving as the faults say."""
        self._check_aborted()
        await self._delay()
        view = memoryview(bytes(data))
        f = self.faults
        while view and not self.truncated:
            if f.stall_after is not None and self.sent >= f.stall_after and not self._stalled:
                self._stalled = True
                await trio.sleep(f.stall_for)
            if f.abort_after is not None and self.sent >= f.abort_after:
                await self._abort()
                self._check_aborted()
            if f.truncate_after is not None and self.sent >= f.truncate_after:
                await self._truncate()
                break
            size = min(len(view), self._room())
            await self.stream.send_all(view[:size])
            self.sent += size
            view = view[size:]
            if f.drip is not None and view:
                await trio.sleep(f.drip_interval)
        if self.truncated:
            await trio.lowlevel.checkpoint()

    def _room(self) -> int:
        # How many bytes the next piece may hold: up to the next trigger, one drip.
        f = self.faults
        room = math.inf
        for trigger in (
            f.stall_after if not self._stalled else None,
            f.abort_after,
            f.truncate_after,
        ):
            if trigger is not None and trigger > self.sent:
                room = min(room, trigger - self.sent)
        if f.drip is not None:
            room = min(room, self._rng.randint(1, f.drip))
        return int(room) if room != math.inf else 1 << 62

    async def _abort(self) -> None:
        self.aborted = True
        if isinstance(self.stream, trio.SocketStream):
            close_with_reset(self.stream.socket)
        await trio.aclose_forcefully(self.stream)

    async def _truncate(self) -> None:
        self.truncated = True
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()
        else:
            await self.stream.aclose()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Receive, after the delay and (once) the receive stall."""
        self._check_aborted()
        await self._delay()
        f = self.faults
        limit = f.stall_receive_after
        if limit is not None and not self._receive_stalled:
            if self.received >= limit:
                self._receive_stalled = True
                await trio.sleep(f.stall_for)
            elif max_bytes is None or max_bytes > limit - self.received:
                max_bytes = limit - self.received  # stop exactly at the trigger
        data = await self.stream.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def wait_send_all_might_not_block(self) -> None:
        """As the wrapped stream's."""
        self._check_aborted()
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Send EOF (nothing to do once truncated: EOF was sent then)."""
        self._check_aborted()
        if self.truncated:
            await trio.lowlevel.checkpoint()
            return
        if not isinstance(self.stream, trio.abc.HalfCloseableStream):
            raise TypeError(f"{type(self.stream).__name__} cannot send EOF")
        await self.stream.send_eof()

    async def aclose(self) -> None:
        """Close the wrapped stream."""
        await self.stream.aclose()
