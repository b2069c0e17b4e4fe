"""The trio Stream contract's one-sender rule, for the streams triosrv implements.

trio's :class:`~trio.abc.SendStream` says two tasks sending at once is a
:exc:`trio.BusyResourceError`. A wrapper must enforce it itself: the stream it wraps
may not notice (trio's lockstep memory streams don't), and a second sender would
interleave its bytes with the first's. :class:`BufferedStream` and
:class:`StreamConnection` share this guard and, as wrappers of another stream, the
sending calls that only pass through (`WrapsSends`); :class:`SocketConnection`
checks inline, on its per-call hot path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import trio


class OneSender:
    """Mixin: :meth:`_send_guard` around every sending operation.

    The class sets ``self._sending = False`` in its ``__init__``.
    """

    _sending: bool

    @contextlib.contextmanager
    def _send_guard(self) -> Iterator[None]:
        # BusyResourceError for a second sender; the flag is cleared however the
        # operation ends (cancelled, timed out, broken).
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            yield
        finally:
            self._sending = False


class WrapsSends(OneSender):
    """Mixin for a wrapper of the stream ``self.stream``: the sending calls that pass
    straight through, each under :meth:`_send_guard`."""

    stream: trio.abc.Stream

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until a send would probably not block (see trio's Stream docs)."""
        with self._send_guard():
            await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Close the wrapped stream's sending side (a TCP FIN); the peer's receive then
        returns ``b""``. TypeError if the wrapped stream cannot half-close."""
        stream = self.stream
        if not isinstance(stream, trio.abc.HalfCloseableStream):
            raise TypeError(f"{type(stream).__name__} cannot send EOF")
        with self._send_guard():
            await stream.send_eof()
