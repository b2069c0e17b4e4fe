"""BufferedStream: receive_until, receive_exactly and lines over any trio stream.

Why an object and not free functions: a stream hands out chunks, not lines. Reading
until a delimiter almost always reads past it, and those bytes belong to the next call.
A helper that returned only the line would lose them; so the helpers live on an object
that wraps the stream and keeps what it read ahead (``buffer``) for the next call --
and for ``receive_some``, so that code reading raw bytes afterwards sees every byte.

Cancellation: bytes are moved into the buffer as soon as the stream returns them, and
taken out only when a call returns. A call that is cancelled or times out while it
waits loses nothing: the same call again goes on from the same bytes.

Memory: every helper takes a limit. ``receive_until`` gives up with
:exc:`~triosrv.protocols.FrameTooLongError` once ``max_bytes`` have arrived without
the delimiter; ``receive_exactly(n)`` holds at most ``n`` bytes plus one chunk. So the
buffer never holds more than the largest limit asked for, plus one chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from ._one_sender import WrapsSends
from .protocols import IncompleteFrameError
from .protocols._lines import find_delimiter

__all__ = ["BufferedStream"]


class BufferedStream(WrapsSends, trio.abc.HalfCloseableStream):
    """A stream wrapper with a read-ahead buffer and the everyday receive helpers.

    ::

        async def handler(conn: triosrv.Connection) -> None:
            stream = triosrv.BufferedStream(conn)
            header = await stream.receive_until(b"\\r\\n\\r\\n", max_bytes=8192)
            body = await stream.receive_exactly(content_length(header))
            async for line in stream.lines(max_length=1024):
                ...

    It is a :class:`trio.abc.HalfCloseableStream` itself: ``receive_some`` returns
    buffered bytes first, ``send_all``, ``send_eof`` and ``wait_send_all_might_not_block``
    go straight to the wrapped stream. It owns the wrapped stream: ``aclose()`` closes
    it. Once wrapped, read only through the wrapper (it may hold bytes the stream has
    already given out). A :class:`~triosrv.FrameChannel` over a ``BufferedStream``
    starts from the bytes left in its buffer.

    Each read from the wrapped stream asks for at most ``receive_size`` bytes (default:
    the stream's default; ``Limits.recv_size`` for a connection). On a
    :class:`~triosrv.Connection` every wait is under the idle timeout
    (:exc:`~triosrv.IdleTimeout`), which bounds one wait; the minimum receive rate or a
    ``trio.fail_after`` around the call bounds a whole frame dripped byte by byte.

    Every receive method is a checkpoint, even when served from the buffer, and raises
    :exc:`trio.BusyResourceError` if another task is receiving, and
    :exc:`trio.ClosedResourceError` after ``aclose()``.
    """

    def __init__(self, stream: trio.abc.Stream, *, receive_size: int | None = None) -> None:
        if receive_size is not None and receive_size < 1:
            raise ValueError(f"receive_size must be >= 1, got {receive_size}")
        #: The wrapped stream (owned: ``aclose()`` closes it).
        self.stream = stream
        self._receive_size = receive_size
        self._buffer = bytearray()
        self._eof = False
        self._receiving = False
        self._sending = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<triosrv.BufferedStream {len(self._buffer)} bytes buffered over {self.stream!r}>"

    @property
    def buffer(self) -> bytes:
        """The bytes read ahead from the stream and not yet returned (a copy)."""
        return bytes(self._buffer)

    # -- receiving -------------------------------------------------------------------

    def _enter(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this BufferedStream was closed")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        self._receiving = True

    async def _fill(self) -> bool:
        """Append one chunk from the stream; False (and remember it) at EOF."""
        if self._eof:
            return False
        data = await self.stream.receive_some(self._receive_size)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def _take(self, end: int, skip: int = 0) -> bytes:
        data = bytes(self._buffer[:end])
        del self._buffer[: end + skip]
        return data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return up to *max_bytes* buffered bytes, or else one chunk from the stream.

        ``b""`` at EOF. ``max_bytes`` defaults to everything buffered (or the stream's
        default).
        """
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self._enter()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._buffer:
                data = self._take(len(self._buffer) if max_bytes is None else max_bytes)
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            if self._eof:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            data = bytes(await self.stream.receive_some(max_bytes or self._receive_size))
            self._eof = not data
            return data
        finally:
            self._receiving = False

    async def receive_exactly(self, n: int) -> bytes:
        """Return exactly *n* bytes.

        *n* is the caller's bound on what is buffered: check a length the peer sent
        before passing it here.

        Raises:
            IncompleteFrameError: the peer sent EOF before *n* bytes arrived (its
                ``received`` says how many did; they stay in ``buffer``).
            ValueError: *n* is negative.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._enter()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if len(self._buffer) >= n:
                data = self._take(n)
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            while len(self._buffer) < n:
                if not await self._fill():
                    raise IncompleteFrameError(len(self._buffer), what=f"{n}-byte read")
            return self._take(n)
        finally:
            self._receiving = False

    async def receive_until(self, delimiter: bytes, *, max_bytes: int) -> bytes:
        """Return the bytes before the next *delimiter*, and consume the delimiter too.

        Raises:
            FrameTooLongError: *max_bytes* bytes arrived without the delimiter after
                them (the bytes stay in ``buffer``; the usual answer is an error reply
                and a close).
            IncompleteFrameError: the peer sent EOF before the delimiter (``received``
                is 0 when nothing at all was left: a clean end between messages).
            ValueError: *delimiter* is empty or *max_bytes* negative.
        """
        line = await self._receive_until(delimiter, max_bytes)
        if line is None:
            raise IncompleteFrameError(0, what="delimited read")
        return line

    async def _receive_until(self, delimiter: bytes, max_bytes: int) -> bytes | None:
        # None: EOF with nothing buffered (a clean end, for lines()).
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._enter()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            buffer = self._buffer
            index = find_delimiter(buffer, delimiter, max_bytes, 0)
            if index >= 0:
                line = self._take(index, len(delimiter))
                await trio.lowlevel.cancel_shielded_checkpoint()
                return line
            while True:
                scan_from = max(0, len(buffer) - len(delimiter) + 1)
                if not await self._fill():
                    if buffer:
                        raise IncompleteFrameError(len(buffer), what="delimited read")
                    return None
                index = find_delimiter(buffer, delimiter, max_bytes, scan_from)
                if index >= 0:
                    return self._take(index, len(delimiter))
        finally:
            self._receiving = False

    def lines(self, *, delimiter: bytes = b"\n", max_length: int = 16384) -> AsyncIterator[bytes]:
        """Iterate the lines (without *delimiter*) until the peer's EOF: ``async for``.

        Each line is one :meth:`receive_until` (so the same limits, timeouts and
        cancellation apply). The iteration ends when the peer sends EOF right after a
        delimiter. It is a plain async iterator, not a generator: breaking out of the
        loop leaves the unread bytes in ``buffer`` and needs no cleanup.

        Raises (from ``__anext__``):
            FrameTooLongError: a line longer than *max_length*.
            IncompleteFrameError: the peer sent EOF in the middle of a line.
        """
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        return LineIterator(self._receive_until, delimiter, max_length)

    # -- sending and closing: straight to the wrapped stream -------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of *data* on the wrapped stream."""
        with self._send_guard():
            await self.stream.send_all(data)

    async def aclose(self) -> None:
        """Close this wrapper and the wrapped stream (idempotent)."""
        self._closed = True
        await self.stream.aclose()


class LineIterator(AsyncIterator[bytes]):
    """The async iterator of :meth:`BufferedStream.lines`."""

    __slots__ = ("_delimiter", "_max_length", "_receive_until")

    def __init__(
        self,
        receive_until: Callable[[bytes, int], Awaitable[bytes | None]],
        delimiter: bytes,
        max_length: int,
    ) -> None:
        # The stream's own bound method: the iterator needs nothing else of it.
        self._receive_until = receive_until
        self._delimiter = delimiter
        self._max_length = max_length

    def __aiter__(self) -> LineIterator:
        return self

    async def __anext__(self) -> bytes:
        line = await self._receive_until(self._delimiter, self._max_length)
        if line is None:
            raise StopAsyncIteration
        return line
