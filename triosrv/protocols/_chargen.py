"""The character generator protocol (RFC 864): an endless stream of text lines."""

from __future__ import annotations

from ._base import Protocol, bad_max_bytes, data_after_eof

__all__ = ["CHARGEN_LINE_LENGTH", "Chargen", "chargen_line"]

CHARGEN_LINE_LENGTH = 72
"""Printable characters on one chargen line, not counting the CRLF that ends it."""

# The 95 printable ASCII characters, space (32) to tilde (126), in the order RFC 864
# rotates through them.
_PRINTABLE = bytes(range(32, 127))
_PRINTABLE_TWICE = _PRINTABLE * 2


def chargen_line(n: int) -> bytes:
    """Return line *n* (0-based) of the chargen stream, CRLF included (74 bytes).

    The line is the :data:`CHARGEN_LINE_LENGTH` characters starting at offset
    ``n % 95`` in the circular sequence of printable ASCII characters, so line 0 starts
    with a space and line 95 equals line 0.

    Raises:
        ValueError: if *n* is negative.
    """
    if n < 0:
        raise ValueError(f"chargen line numbers start at 0, got {n!r}")
    start = n % len(_PRINTABLE)
    return _PRINTABLE_TWICE[start : start + CHARGEN_LINE_LENGTH] + b"\r\n"


# The stream repeats every 95 lines: one cycle is 95 * 74 = 7030 bytes. Keeping the
# cycle twice over lets any window of up to one cycle, from any offset, be a single
# slice (one copy, no joins, no modulo per line).
_CYCLE = b"".join(chargen_line(n) for n in range(len(_PRINTABLE)))
_CYCLE_SIZE = len(_CYCLE)
_CYCLE_TWICE = _CYCLE * 2


class Chargen(Protocol):
    """Character generator (RFC 864): send the chargen lines forever.

    Line *n* is :func:`chargen_line` ``(n)``. Each :meth:`data_to_send` call returns
    exactly ``max_bytes`` bytes continuing the stream where the previous call stopped,
    so a line may be split across calls. Input is thrown away. RFC 864 has the server
    send until the *user* closes, so the peer's EOF does not stop the stream and
    :attr:`close_after_flush` is always false: under the driver loop the connection
    ends when a send fails (the peer closed or reset) or when a timeout fires.
    """

    __slots__ = ("_eof", "_offset")

    def __init__(self) -> None:
        # Position of the next byte inside one cycle, 0 <= _offset < _CYCLE_SIZE.
        self._offset = 0
        self._eof = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Drop *data*; ``b""`` (EOF) is recorded but does not stop the stream.

        Raises:
            ValueError: if called after EOF was already received.
        """
        if self._eof:
            raise data_after_eof(self)
        if not (data.nbytes if isinstance(data, memoryview) else len(data)):
            self._eof = True

    def data_to_send(self, max_bytes: int) -> bytes:
        """Return exactly *max_bytes* bytes: the next part of the chargen stream.

        Raises:
            ValueError: if *max_bytes* is less than 1.
        """
        if max_bytes < 1:
            raise bad_max_bytes(max_bytes)
        start = self._offset
        self._offset = (start + max_bytes) % _CYCLE_SIZE
        if max_bytes <= _CYCLE_SIZE:
            return _CYCLE_TWICE[start : start + max_bytes]
        # Bigger than one cycle: repeat the cycle rotated to start here, joined once.
        rotated = _CYCLE_TWICE[start : start + _CYCLE_SIZE]
        whole, rest = divmod(max_bytes, _CYCLE_SIZE)
        return b"".join([rotated] * whole + [rotated[:rest]])

    @property
    def close_after_flush(self) -> bool:
        """Always false: chargen sends until the connection is closed from outside."""
        return False
