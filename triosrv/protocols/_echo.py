"""The echo protocol (RFC 862): send back every byte received."""

from __future__ import annotations

from ._base import Protocol, bad_max_bytes, data_after_eof

__all__ = ["Echo"]


class Echo(Protocol):
    """Echo (RFC 862): every byte the peer sends is sent back, in order.

    When the peer sends EOF, the bytes still buffered are flushed and then
    :attr:`close_after_flush` becomes true.

    This is the benchmark protocol, so it is built for the common round trip: with
    nothing buffered, a received chunk no longer than ``max_bytes`` is stored as is and
    returned by the next :meth:`data_to_send` *as the same object*, with no copy. A
    ``bytearray`` or ``memoryview`` is copied to ``bytes`` on arrival (the driver may
    reuse its buffer). Only when chunks pile up, or one is longer than ``max_bytes``, do
    the bytes go through an internal ``bytearray``. Under the driver loop (see
    :mod:`triosrv.protocols._base`) at most one chunk is ever buffered.
    """

    # Invariant: at most one of _chunk and _buffer is non-empty; when both are empty
    # nothing is pending. _chunk is the copy-free fast path. _idle is "nothing
    # pending and no EOF", kept up to date so that answer() tests one flag.
    __slots__ = ("_buffer", "_chunk", "_eof", "_idle")

    def __init__(self) -> None:
        self._chunk = b""
        self._buffer = bytearray()
        self._eof = False
        self._idle = True

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer *data* to be echoed; ``b""`` means the peer sent EOF.

        Accepts ``bytes``, ``bytearray`` or ``memoryview`` (the last two are copied).

        Raises:
            ValueError: if called after EOF was already received.
        """
        if self._eof:
            raise data_after_eof(self)
        if type(data) is not bytes:
            data = bytes(data)
        self._idle = False
        if not data:
            self._eof = True
        elif self._buffer:
            self._buffer += data
        elif self._chunk:
            # Chunks pile up: leave the fast path until the buffer is drained.
            self._buffer += self._chunk
            self._buffer += data
            self._chunk = b""
        else:
            self._chunk = data

    def data_to_send(self, max_bytes: int) -> bytes:
        """Return up to *max_bytes* of the bytes received and not yet echoed.

        Returns ``b""`` when nothing is buffered.

        Raises:
            ValueError: if *max_bytes* is less than 1.
        """
        if max_bytes < 1:
            raise bad_max_bytes(max_bytes)
        chunk = self._chunk
        if chunk:
            self._chunk = b""
            if len(chunk) <= max_bytes:
                self._idle = not self._eof
                return chunk
            # Too long for one call: slicing bytes would copy the tail on every call
            # (quadratic); a bytearray deletes its head in amortised constant time.
            self._buffer += chunk
        buffer = self._buffer
        if not buffer:
            return b""
        if len(buffer) <= max_bytes:
            out = bytes(buffer)
            buffer.clear()
            self._idle = not self._eof
        else:
            out = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
        return out

    def answer(self, data: bytes, max_bytes: int) -> bytes | None:
        """The fast path (see :mod:`triosrv.protocols._base`): *data* itself, when
        nothing is buffered; else ``None``. (The driver vouches that *data* is
        ``bytes`` no longer than *max_bytes*.)

        Returns ``None`` after EOF too, so that the driver's ``receive_data`` raises.
        """
        return data if self._idle else None

    @property
    def close_after_flush(self) -> bool:
        """True once the peer sent EOF and every received byte has been taken."""
        return self._eof and not self._chunk and not self._buffer
