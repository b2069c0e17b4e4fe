"""Framers whose header announces the payload's length: length prefixes, netstrings."""

from __future__ import annotations

from typing import Literal

from ._framing import (
    Framer,
    FrameTooLongError,
    MalformedFrameError,
    check_max_length,
    payload_too_long,
)

__all__ = ["LengthPrefixFramer", "NetstringFramer", "decode_varint", "encode_varint"]

PrefixSize = Literal[1, 2, 4, 8, "varint"]
ByteOrder = Literal["big", "little"]

# The default limit of the framers that announce lengths: 1 MiB.
DEFAULT_MAX_LENGTH = 1 << 20
# A varint of up to 64 bits takes at most 10 bytes.
_VARINT_CEILING = (1 << 64) - 1


def encode_varint(value: int) -> bytes:
    """Encode *value* (0 <= value < 2**64) as an unsigned LEB128 varint (protobuf's).

    Raises:
        ValueError: *value* is negative or does not fit in 64 bits.
    """
    if not 0 <= value <= _VARINT_CEILING:
        raise ValueError(f"a varint holds 0 to 2**64-1, got {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(
    data: bytes | bytearray, max_value: int, *, longest: int | None = None
) -> tuple[int, int] | None:
    """Decode the unsigned LEB128 varint at the start of *data*.

    Returns ``(value, header_length)``, or None if *data* holds only its beginning.
    Decides from the bytes alone, as early as it can: a varint with more bytes than
    *max_value* needs is over it (for a minimal encoding, the only one accepted).
    *longest* is ``len(encode_varint(max_value))``, for callers that cache it.

    Raises:
        FrameTooLongError: the value is, or will certainly be, over *max_value*.
        MalformedFrameError: a non-minimal encoding (a last byte of 0 after the first).
    """
    if longest is None:
        longest = len(encode_varint(max_value))
    value = 0
    for index, byte in enumerate(data):
        if index == longest:
            raise FrameTooLongError(max_value)
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            if byte == 0 and index:
                raise MalformedFrameError("non-minimal varint length prefix")
            if value > max_value:
                raise FrameTooLongError(max_value, value)
            return value, index + 1
    return None


class LengthPrefixFramer(Framer):
    """Frames with a binary length prefix: the payload's length, then the payload.

    ``prefix`` is the header's size in bytes -- 1, 2, 4 (the default, Twisted's
    ``Int32StringReceiver``) or 8 -- read as an unsigned integer in ``byteorder``
    ("big", network order, the default; or "little"); or ``"varint"``: an unsigned
    LEB128 varint as protobuf's delimited messages use (minimal encodings only).

    ``max_length`` bounds the payload (default 1 MiB, capped to what the prefix can
    say). A header announcing more is a :exc:`FrameTooLongError` at once, before any
    of the payload is buffered.
    """

    __slots__ = ("_longest", "_size", "byteorder", "max_length", "prefix")

    def __init__(
        self,
        prefix: PrefixSize = 4,
        *,
        byteorder: ByteOrder = "big",
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        if prefix == "varint":
            ceiling, self._size = _VARINT_CEILING, 0
        elif prefix in (1, 2, 4, 8) and not isinstance(prefix, bool):
            ceiling, self._size = (1 << (8 * prefix)) - 1, prefix
        else:
            raise ValueError(f"prefix must be 1, 2, 4, 8 or 'varint', got {prefix!r}")
        if byteorder not in ("big", "little"):
            raise ValueError(f"byteorder must be 'big' or 'little', got {byteorder!r}")
        if max_length is None:
            max_length = min(DEFAULT_MAX_LENGTH, ceiling)
        self.max_length = check_max_length(max_length, ceiling)
        self.prefix: PrefixSize = prefix
        self.byteorder: ByteOrder = byteorder
        self._longest = len(encode_varint(self.max_length))

    def __repr__(self) -> str:
        return (
            f"LengthPrefixFramer({self.prefix!r}, byteorder={self.byteorder!r}, "
            f"max_length={self.max_length})"
        )

    def _header(self, buffer: bytearray) -> tuple[int, int] | None:
        size = self._size
        if not size:
            return decode_varint(buffer, self.max_length, longest=self._longest)
        if len(buffer) < size:
            return None
        length = int.from_bytes(buffer[:size], self.byteorder)
        if length > self.max_length:
            raise FrameTooLongError(self.max_length, length)
        return length, size

    def extract_frame(self, buffer: bytearray) -> bytes | None:
        """Take the first frame from *buffer* (see :meth:`Framer.extract_frame`)."""
        header = self._header(buffer)
        if header is None:
            return None
        length, start = header
        end = start + length
        if len(buffer) < end:
            return None
        payload = bytes(buffer[start:end])
        del buffer[:end]
        return payload

    def frame(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Return the length prefix followed by *payload*.

        Raises:
            ValueError: *payload* is longer than ``max_length``.
        """
        payload = bytes(payload)
        length = len(payload)
        if length > self.max_length:
            raise payload_too_long(length, self.max_length)
        if not self._size:
            return encode_varint(length) + payload
        return length.to_bytes(self._size, self.byteorder) + payload


class NetstringFramer(Framer):
    """Netstrings (D. J. Bernstein): ``b"5:hello,"`` -- decimal length, colon, payload, comma.

    Strict, as the specification asks: ASCII digits only, no leading zero (``0`` itself
    is fine), no sign or space; anything else, or a missing comma, is a
    :exc:`MalformedFrameError`. A length over ``max_length`` (default 1 MiB) is a
    :exc:`FrameTooLongError` as soon as its digits say so, before the payload arrives.
    """

    __slots__ = ("_digits", "max_length")

    frame_name = "netstring"

    def __init__(self, *, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        super().__init__()
        self.max_length = check_max_length(max_length)
        self._digits = len(str(self.max_length))

    def __repr__(self) -> str:
        return f"NetstringFramer(max_length={self.max_length})"

    def _header(self, buffer: bytearray) -> tuple[int, int] | None:
        value = 0
        # Digits up to one past the longest allowed number, then the colon.
        for index, byte in enumerate(buffer[: self._digits + 2]):
            if byte == 0x3A:  # ':'
                if not index:
                    raise MalformedFrameError("netstring without a length")
                return value, index + 1
            if not 0x30 <= byte <= 0x39:
                raise MalformedFrameError(f"netstring length with a non-digit byte {byte:#04x}")
            if index == 1 and buffer[0] == 0x30:
                raise MalformedFrameError("netstring length with a leading zero")
            value = value * 10 + byte - 0x30
            if value > self.max_length:
                raise FrameTooLongError(self.max_length, value, what="netstring")
        return None

    def extract_frame(self, buffer: bytearray) -> bytes | None:
        """Take the first netstring from *buffer* (see :meth:`Framer.extract_frame`)."""
        header = self._header(buffer)
        if header is None:
            return None
        length, start = header
        end = start + length
        if len(buffer) <= end:
            return None
        if buffer[end] != 0x2C:  # ','
            raise MalformedFrameError("netstring not ended by a comma")
        payload = bytes(buffer[start:end])
        del buffer[: end + 1]
        return payload

    def frame(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Return *payload* as a netstring.

        Raises:
            ValueError: *payload* is longer than ``max_length``.
        """
        payload = bytes(payload)
        if len(payload) > self.max_length:
            raise payload_too_long(len(payload), self.max_length)
        return b"%d:%s," % (len(payload), payload)
