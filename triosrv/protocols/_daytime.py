"""The daytime protocol (RFC 867): send the current time as one line, then close."""

from __future__ import annotations

import datetime

from ._base import Protocol, bad_max_bytes, data_after_eof

__all__ = ["Daytime"]

# strftime's %A and %B follow the process locale (LC_TIME), which could make the line
# non-English or even non-ASCII; RFC 867's example is English, so the names are fixed.
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def _format_daytime(now: datetime.datetime) -> bytes:
    # "%A, %B %d, %Y %H:%M:%S-%Z" (RFC 867's suggested syntax), without "-%Z" when
    # the datetime is naive; names from the tables above instead of the locale.
    date = f"{_WEEKDAYS[now.weekday()]}, {_MONTHS[now.month - 1]} "
    text = date + now.strftime("%d, %Y %H:%M:%S")
    if now.tzinfo is not None:
        text += "-" + (now.tzname() or "")
    # A tzinfo may name itself with non-ASCII characters; a "?" beats a crash.
    return (text + "\r\n").encode("ascii", errors="replace")


class Daytime(Protocol):
    """Daytime (RFC 867): send *now* as one ASCII line ending in CRLF, then close.

    The line is *now* formatted as ``"%A, %B %d, %Y %H:%M:%S-%Z"``, e.g.
    ``"Monday, February 22, 1982 17:37:43-UTC"``; a naive datetime has no zone, so it is
    formatted as ``"%A, %B %d, %Y %H:%M:%S"``. Day and month names are English whatever
    the process locale. Once the whole line has been taken by :meth:`data_to_send`,
    :attr:`close_after_flush` becomes true. Input is ignored.

    The protocol reads no clock: the caller passes the time, e.g.
    ``Daytime(datetime.now(timezone.utc))``.

    Args:
        now: the time to send.
    """

    __slots__ = ("_eof", "_line", "_offset")

    def __init__(self, now: datetime.datetime) -> None:
        self._line = _format_daytime(now)
        self._offset = 0
        self._eof = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Ignore *data*; ``b""`` (EOF) is recorded but changes nothing.

        Raises:
            ValueError: if called after EOF was already received.
        """
        if self._eof:
            raise data_after_eof(self)
        if not (data.nbytes if isinstance(data, memoryview) else len(data)):
            self._eof = True

    def data_to_send(self, max_bytes: int) -> bytes:
        """Return up to *max_bytes* of the time line not yet taken, or ``b""``.

        Raises:
            ValueError: if *max_bytes* is less than 1.
        """
        if max_bytes < 1:
            raise bad_max_bytes(max_bytes)
        start = self._offset
        if start == 0 and max_bytes >= len(self._line):
            out = self._line
        else:
            out = self._line[start : start + max_bytes]
        self._offset = start + len(out)
        return out

    @property
    def close_after_flush(self) -> bool:
        """True once the whole time line has been taken."""
        return self._offset == len(self._line)
