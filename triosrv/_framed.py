"""FrameChannel: any sans-IO framer bound to a trio stream, as a channel of frames.

This is the generic wrapper python-trio/trio#796 sketches: a framer from
:mod:`triosrv.protocols` (lines, length prefixes, netstrings, or your own
:class:`~triosrv.protocols.Framer`) turns a byte stream into frames; this module
binds one to a :class:`trio.abc.Stream` -- a :class:`~triosrv.Connection` in a
handler -- as a :class:`trio.abc.Channel` of ``bytes``: ``receive()`` returns one
frame's payload, ``send(payload)`` sends one frame, ``async for`` iterates frames
until the peer's EOF.

Cancellation: the bytes already received live in the framer, not in the waiting call.
A ``receive()`` that is cancelled (or times out) while it waits for the rest of a frame
loses nothing: the next ``receive()`` goes on from the same bytes. A frame is either
returned or still buffered, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from .protocols import END_OF_STREAM, Framer, NoFrame

__all__ = ["FrameChannel"]


class FrameChannel(trio.abc.Channel[bytes]):
    """A channel of frames over a byte stream, split and built by a sans-IO framer.

    Example, a line-based handler::

        async def handler(conn: triosrv.Connection) -> None:
            lines = triosrv.FrameChannel(conn, LineFramer(crlf="lenient", max_length=1024))
            try:
                async for line in lines:
                    await lines.send(line.upper())
            except FrameTooLongError:
                await conn.send_all(b"ERR line too long\\r\\n")  # then return: closed

    The channel owns the stream's receiving side from then on: read only through it
    (bytes it buffered are not visible to ``stream.receive_some``). Sending frames and
    raw bytes (``stream.send_all``) may be mixed. ``aclose()`` closes the stream; in a
    handler the server closes the connection anyway when the handler returns.

    Each ``receive()`` reads chunks of at most ``receive_size`` bytes (default: the
    stream's own default, ``Limits.recv_size`` for a connection), so the framer never
    holds more than one unfinished frame (at most its ``max_length`` plus a header) and
    one chunk.

    ``receive()`` raises:

    - :exc:`trio.EndOfChannel` when the peer sent EOF at a frame boundary (so
      ``async for`` ends there);
    - :exc:`~triosrv.protocols.FrameTooLongError`,
      :exc:`~triosrv.protocols.MalformedFrameError`, or
      :exc:`~triosrv.protocols.IncompleteFrameError` when the peer sent EOF in the middle
      of a frame -- all :exc:`~triosrv.protocols.FramingError`; once raised, every later
      ``receive()`` raises it again (the stream cannot be understood past it);
    - whatever the stream's ``receive_some`` raises: on a :class:`~triosrv.Connection`,
      :exc:`~triosrv.IdleTimeout` when one wait for bytes lasts longer than the idle
      timeout, and the other connection timeouts;
    - :exc:`trio.BusyResourceError` if another task is receiving on this channel;
      :exc:`trio.ClosedResourceError` after ``aclose()``.

    Every ``receive()`` and ``send()`` is a checkpoint, as in trio, even when the frame
    was already buffered; a cancelled ``receive()`` takes no frame and loses no byte.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        framer: Framer,
        *,
        receive_size: int | None = None,
    ) -> None:
        if receive_size is not None and receive_size < 1:
            raise ValueError(f"receive_size must be >= 1, got {receive_size}")
        #: The byte stream (owned: ``aclose()`` closes it).
        self.stream = stream
        #: The sans-IO framer that splits and builds the frames.
        self.framer = framer
        self._receive_size = receive_size
        self._receiving = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<triosrv.FrameChannel {self.framer!r} over {self.stream!r}>"

    async def receive(self) -> bytes:
        """Return the next frame's payload, reading from the stream as needed.

        See the class docstring for what it raises and for cancellation.
        """
        if self._closed:
            raise trio.ClosedResourceError("this FrameChannel was closed")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this channel")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            frame = self.framer.next_frame()
            if isinstance(frame, bytes):
                # Taken: from here on no cancellation may drop it.
                await trio.lowlevel.cancel_shielded_checkpoint()
                return frame
            return await self._receive_more(frame)
        finally:
            self._receiving = False

    async def _receive_more(self, frame: NoFrame) -> bytes:
        # A frame needs more bytes: read chunks until the framer has one (or fails).
        framer = self.framer
        while frame is not END_OF_STREAM:
            data = await self.stream.receive_some(self._receive_size)
            framer.receive_data(data)
            got = framer.next_frame()
            if isinstance(got, bytes):
                return got
            frame = got
        raise trio.EndOfChannel

    async def send(self, value: bytes | bytearray | memoryview) -> None:
        """Send *value* as one frame (``framer.frame(value)``), with ``send_all``.

        Raises:
            ValueError: the framer cannot carry *value* (too long, holds a delimiter);
                nothing was sent.
            trio.ClosedResourceError: after ``aclose()``.
            Whatever the stream's ``send_all`` raises (on a connection,
            :exc:`~triosrv.WriteTimeout`).
        """
        if self._closed:
            raise trio.ClosedResourceError("this FrameChannel was closed")
        await self.stream.send_all(self.framer.frame(value))

    async def send_many(self, values: Iterable[bytes | bytearray | memoryview]) -> None:
        """Send several frames with one ``send_all`` (a pipelined batch of replies).

        Raises what :meth:`send` raises; a payload the framer cannot carry raises
        ``ValueError`` before anything is sent.
        """
        if self._closed:
            raise trio.ClosedResourceError("this FrameChannel was closed")
        frame = self.framer.frame
        await self.stream.send_all(b"".join([frame(value) for value in values]))

    async def aclose(self) -> None:
        """Close the channel and its stream (idempotent). Buffered frames are dropped."""
        self._closed = True
        await self.stream.aclose()
