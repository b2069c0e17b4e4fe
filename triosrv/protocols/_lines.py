"""The line framer: frames that end with a delimiter (lines), bounded in length."""

from __future__ import annotations

from typing import Literal

from ._framing import (
    Framer,
    FrameTooLongError,
    MalformedFrameError,
    check_max_length,
    payload_too_long,
)

__all__ = ["LineFramer", "find_delimiter"]

CRLF = Literal["strict", "lenient"]


def find_delimiter(buffer: bytearray, delimiter: bytes, max_length: int, scan_from: int) -> int:
    """Index of the first *delimiter* in *buffer* ending a line of <= *max_length*, or -1.

    Looks only at ``buffer[scan_from:]`` (the caller knows the bytes before hold no
    delimiter) and only within the first ``max_length + len(delimiter)`` bytes.

    Raises:
        FrameTooLongError: the first ``max_length + len(delimiter)`` bytes hold no
            delimiter, so the line is certainly too long.
    """
    window = max_length + len(delimiter)
    index = buffer.find(delimiter, scan_from, window)
    if index < 0 and len(buffer) >= window:
        raise FrameTooLongError(max_length, what="line")
    return index


class LineFramer(Framer):
    """Lines: each frame ends with a delimiter; the payload is the line without it.

    Three ways to end a line:

    - ``LineFramer(delimiter=b"\\n")`` (the default) or any other non-empty
      ``delimiter``: exactly that byte string ends a line. Twisted's ``LineReceiver``.
    - ``LineFramer(crlf="strict")``: only ``b"\\r\\n"`` ends a line, and a bare ``\\r``
      or ``\\n`` anywhere in a line is a :exc:`MalformedFrameError` -- what SMTP and
      HTTP require since request smuggling showed what tolerance costs.
    - ``LineFramer(crlf="lenient")``: ``b"\\n"`` ends a line, and one ``\\r`` just before
      it is dropped, so ``\\r\\n`` and ``\\n`` both work (Redis inline commands, most
      text protocols). :meth:`frame` ends lines with ``\\r\\n``.

    ``max_length`` bounds a line's payload, delimiter excluded (default 16 KiB, as
    Twisted's ``LineReceiver.MAX_LENGTH``). A longer line is a
    :exc:`FrameTooLongError` as soon as its first ``max_length`` bytes arrived without
    an end; the rest of it is never buffered. At EOF, an unterminated last line is an
    :exc:`IncompleteFrameError`.
    """

    __slots__ = ("_mode", "_scan_from", "delimiter", "max_length")

    frame_name = "line"

    def __init__(
        self,
        *,
        delimiter: bytes | None = None,
        max_length: int = 16384,
        crlf: CRLF | None = None,
    ) -> None:
        super().__init__()
        self.max_length = check_max_length(max_length)
        if crlf is not None:
            if delimiter is not None:
                raise ValueError("give either delimiter or crlf, not both")
            if crlf not in ("strict", "lenient"):
                raise ValueError(f"crlf must be 'strict' or 'lenient', got {crlf!r}")
            delimiter = b"\r\n"
        elif delimiter is None:
            delimiter = b"\n"
        if not isinstance(delimiter, bytes) or not delimiter:
            raise ValueError(f"delimiter must be non-empty bytes, got {delimiter!r}")
        self.delimiter = delimiter
        #: "exact", "strict" or "lenient".
        self._mode = crlf or "exact"
        # The bytes before this index hold no line end (so no search is quadratic).
        self._scan_from = 0

    def __repr__(self) -> str:
        how = f"crlf={self._mode!r}" if self._mode != "exact" else f"delimiter={self.delimiter!r}"
        return f"LineFramer({how}, max_length={self.max_length})"

    def extract_frame(self, buffer: bytearray) -> bytes | None:
        """Take the first line from *buffer* (see :meth:`Framer.extract_frame`)."""
        if self._mode == "exact":
            return self._extract_exact(buffer)
        if self._mode == "lenient":
            return self._extract_lenient(buffer)
        return self._extract_strict(buffer)

    def _take(self, buffer: bytearray, end: int, skip: int) -> bytes:
        line = bytes(buffer[:end])
        del buffer[: end + skip]
        self._scan_from = 0
        return line

    def _extract_exact(self, buffer: bytearray) -> bytes | None:
        delimiter = self.delimiter
        index = find_delimiter(buffer, delimiter, self.max_length, self._scan_from)
        if index < 0:
            self._scan_from = max(0, len(buffer) - len(delimiter) + 1)
            return None
        return self._take(buffer, index, len(delimiter))

    def _extract_lenient(self, buffer: bytearray) -> bytes | None:
        # The \n must come within the payload, an optional \r and itself.
        window = self.max_length + 2
        index = buffer.find(b"\n", self._scan_from, window)
        if index < 0:
            if len(buffer) >= window:
                raise FrameTooLongError(self.max_length, what="line")
            self._scan_from = len(buffer)
            return None
        end = index - 1 if index and buffer[index - 1] == 0x0D else index
        if end > self.max_length:
            raise FrameTooLongError(self.max_length, what="line")
        return self._take(buffer, end, index + 1 - end)

    def _extract_strict(self, buffer: bytearray) -> bytes | None:
        limit = self.max_length + 1  # the first CR or LF must come by then
        start = self._scan_from
        cr = buffer.find(b"\r", start, limit)
        lf = buffer.find(b"\n", start, limit)
        if cr < 0 and lf < 0:
            if len(buffer) >= limit:
                raise FrameTooLongError(self.max_length, what="line")
            self._scan_from = len(buffer)
            return None
        if lf >= 0 and (cr < 0 or lf < cr):
            raise MalformedFrameError("bare LF in a line (only CRLF may end one)")
        if cr + 1 == len(buffer):
            self._scan_from = cr  # is the next byte an LF?
            return None
        if buffer[cr + 1] != 0x0A:
            raise MalformedFrameError("bare CR in a line (only CRLF may end one)")
        return self._take(buffer, cr, 2)

    def frame(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Return ``payload`` followed by the delimiter (``\\r\\n`` in the CRLF modes).

        Raises:
            ValueError: *payload* is longer than ``max_length``, or holds what would end
                the line early (the delimiter; in strict CRLF mode any ``\\r`` or ``\\n``;
                in lenient mode any ``\\n``).
        """
        payload = bytes(payload)
        if len(payload) > self.max_length:
            raise payload_too_long(len(payload), self.max_length)
        line = payload + self.delimiter
        if self._mode == "strict":
            bad = b"\r" in payload or b"\n" in payload
        elif self._mode == "lenient":
            bad = b"\n" in payload
        else:
            bad = line.find(self.delimiter) != len(payload)
        if bad:
            raise ValueError(f"a line cannot hold its own end: {self!r} cannot frame {payload!r}")
        return line
