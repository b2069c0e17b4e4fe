"""RESP2, the Redis serialization protocol: a sans-IO request parser and reply encoders.

Theory of operation
-------------------

A Redis client sends commands in one of two forms, chosen by the first byte of each:

* **multibulk** (``*``): ``*<argc>\\r\\n`` then ``argc`` times ``$<len>\\r\\n<bytes>\\r\\n``.
  This is what every client library sends; arguments are binary-safe.
* **inline** (anything else): one line of words, split like a shell would
  (``"..."`` with ``\\xHH`` escapes, ``'...'``), ended by ``\\n`` or ``\\r\\n``. This is
  what a person types into telnet.

:class:`RespParser` takes the received bytes in chunks of any size and returns the
complete commands, each a list of ``bytes``. It follows Redis 7.0's
``processMultibulkBuffer``/``processInlineBuffer`` (``src/networking.c``) rule for rule,
so that a server built on it answers a malformed request the way Redis does: the same
error reply (:attr:`RespProtocolError.reply`), and then the connection is closed. The
rules that are easy to miss, kept on purpose:

- numbers are Redis's ``string2ll``: ASCII digits, an optional ``-``, no ``+``, no
  leading zeros, no spaces, within a signed 64-bit integer;
- a ``*<n>`` with ``n <= 0`` is an empty command (skipped), like an empty inline line;
- the two bytes after a bulk's data, and the byte after a length line's ``\\r``, are
  skipped without being checked (Redis does not look at them either);
- Redis finds line ends with ``strchr``, which stops at a NUL byte: a length line or an
  inline line with a NUL before its end never ends (the request waits, then is too big);
- a length line or inline line of more than 64 KiB without its end is an error
  ("too big ... request"); a bulk longer than ``max_bulk_len`` (Redis's
  ``proto-max-bulk-len``, 512 MiB) is "invalid bulk length".

One deliberate difference: Redis applies the 64 KiB line limit to whatever one
``read()`` happened to return, so whether a 70 KiB inline line is refused depends on how
the bytes were chunked. Here a line is refused exactly when its end is more than 64 KiB
after its start, whatever the chunking, which is what Redis does when bytes arrive one
read at a time. Same input, same commands and same error, under any chunking: the tests
check it with hypothesis.

Memory is bounded: a command whose arguments (each counted with a fixed overhead of
48 bytes, what a ``bytes`` object and a list slot cost), read so far or all of them,
come to more than ``max_query_buffer`` (Redis's ``client-query-buffer-limit``, 1 GiB)
ends the connection with no reply, as Redis closes a client whose query buffer grows
past that limit. Lines are bounded by the 64 KiB rule. A bulk being received is collected
as a list of chunks and joined once, so a large value costs one copy, not one per chunk.

The encoders build replies: :func:`resp_simple` (``+OK``), :func:`resp_error`
(``-ERR ...``, as Redis's ``addReplyError`` words it), :func:`resp_integer`,
:func:`resp_bulk`, :data:`RESP_NULL_BULK`, :func:`resp_array` (nested lists, ``None``
for a null bulk, ``int`` for an integer).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeAlias

__all__ = [
    "RESP_DEFAULT_MAX_BULK_LEN",
    "RESP_DEFAULT_MAX_QUERY_BUFFER",
    "RESP_INLINE_MAX_SIZE",
    "RESP_NULL_ARRAY",
    "RESP_NULL_BULK",
    "RESP_OK",
    "RespParser",
    "RespProtocolError",
    "RespValue",
    "parse_resp_int",
    "resp_array",
    "resp_bulk",
    "resp_error",
    "resp_integer",
    "resp_simple",
    "split_resp_inline",
]

#: Redis's ``PROTO_INLINE_MAX_SIZE``: the longest line (inline request, ``*``/``$``
#: length line) accepted without its end.
RESP_INLINE_MAX_SIZE = 64 * 1024
#: Redis's default ``proto-max-bulk-len``: the longest bulk argument.
RESP_DEFAULT_MAX_BULK_LEN = 512 * 1024 * 1024
#: Redis's default ``client-query-buffer-limit``.
RESP_DEFAULT_MAX_QUERY_BUFFER = 1024 * 1024 * 1024
# What an argument costs on top of its bytes, for the query-buffer limit: a bytes
# object's header and a list slot (CPython, 64-bit).
ARGUMENT_OVERHEAD = 48

_INT_MAX = 2**31 - 1
_LLONG_MIN = -(2**63)
_LLONG_MAX = 2**63 - 1
_STRING2LL = re.compile(rb"-?[1-9][0-9]{0,19}|0").fullmatch
# The lengths every request has: looked up instead of parsed.
_SMALL = {str(i).encode(): i for i in range(1025)}

RESP_OK = b"+OK\r\n"
RESP_NULL_BULK = b"$-1\r\n"
RESP_NULL_ARRAY = b"*-1\r\n"


def parse_resp_int(text: bytes) -> int | None:
    """Redis's ``string2ll``: the integer ``text`` spells, or None.

    Only ``-?[1-9][0-9]*`` or ``0`` within a signed 64-bit integer: no ``+``, no spaces,
    no leading zeros, no ``-0``, ASCII digits only (``int()`` accepts all of these).
    """
    small = _SMALL.get(text)
    if small is not None:
        return small
    if len(text) > 20 or _STRING2LL(text) is None:
        return None
    value = int(text)
    if value < _LLONG_MIN or value > _LLONG_MAX:
        return None
    return value


class RespProtocolError(Exception):
    """The client broke the protocol; the connection must be closed.

    ``reply`` is what Redis sends before it closes (an error reply, e.g.
    ``b"-ERR Protocol error: invalid bulk length\\r\\n"``), or ``b""`` when Redis closes
    without a word (the query buffer limit). The message is the reply's text.
    """

    def __init__(self, reply: bytes, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply


def _protocol_error(text: str | bytes) -> RespProtocolError:
    raw = text.encode() if isinstance(text, str) else text
    return RespProtocolError(resp_error(b"Protocol error: " + raw), raw.decode("latin-1"))


class RespParser:
    """Split a client's byte stream into commands (see the module docstring).

    Feed it every received chunk with :meth:`feed`, which returns the commands that
    are now complete, in order. After a protocol error, :attr:`error` is set: the
    commands before it are still returned (Redis runs them first), then the caller
    sends ``error.reply`` and closes. Feeding after an error returns nothing.
    One parser per connection; it owns no I/O and never blocks.
    """

    __slots__ = (
        "_args",
        "_buf",
        "_bulk_need",
        "_chunks",
        "_have",
        "_pending",
        "_remaining",
        "error",
        "max_bulk_len",
        "max_query_buffer",
    )

    def __init__(
        self,
        *,
        max_bulk_len: int = RESP_DEFAULT_MAX_BULK_LEN,
        max_query_buffer: int = RESP_DEFAULT_MAX_QUERY_BUFFER,
    ) -> None:
        if max_bulk_len < 1 or max_query_buffer < 1:
            raise ValueError("max_bulk_len and max_query_buffer must be >= 1")
        self.max_bulk_len = max_bulk_len
        self.max_query_buffer = max_query_buffer
        #: The protocol error that ended the stream, or None.
        self.error: RespProtocolError | None = None
        self._buf = b""  # received, not parsed yet (starts at a line or a bulk's data)
        self._args: list[bytes] | None = None  # the multibulk command being read
        self._remaining = 0  # its arguments still to read
        self._pending = 0  # what its arguments read so far cost (query-buffer limit)
        self._bulk_need = -1  # > 0: _buf starts at bulk data; bytes needed (with CRLF)
        self._chunks: list[bytes] = []  # received while waiting for a bulk's data
        self._have = 0  # bytes in _buf and _chunks

    @property
    def buffered(self) -> int:
        """Bytes held for the unfinished command: unparsed bytes plus its arguments
        read so far (with their overhead)."""
        return len(self._buf) + sum(len(c) for c in self._chunks) + self._pending

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Take the next received bytes; return the commands now complete.

        ``data`` may be any part of the stream (``bytearray`` and ``memoryview`` are
        copied). Sets :attr:`error` on a protocol error.
        """
        if self.error is not None or not data:
            return []
        if type(data) is not bytes:
            data = bytes(data)
        if self._bulk_need > 0:
            # Waiting for a bulk's data: collect the chunks, join them once.
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._bulk_need:
                if self._have + self._pending > self.max_query_buffer:
                    self._fail(_query_buffer_limit())
                return []
            buf = self._buf + b"".join(self._chunks)
            self._chunks = []
        elif self._buf:
            buf = self._buf + data
        else:
            buf = data
        commands: list[list[bytes]] = []
        try:
            pos = self._parse(buf, commands)
        except RespProtocolError as exc:
            self._fail(exc)
            return commands
        self._buf = buf[pos:] if pos < len(buf) else b""
        self._have = len(self._buf)
        if self._bulk_need > 0 and self._have + self._pending > self.max_query_buffer:
            self._fail(_query_buffer_limit())
        return commands

    def _fail(self, exc: RespProtocolError) -> None:
        self.error = exc
        self._buf = b""
        self._chunks = []
        self._args = None
        self._have = self._pending = 0

    def _parse(self, buf: bytes, commands: list[list[bytes]]) -> int:
        # Returns how far it parsed; keeps the unfinished command's state on self.
        args = self._args
        pos = 0
        if (
            args is None
            and self.max_bulk_len >= _FAST_MAX_BULK
            and len(buf) * _FAST_COST_FACTOR <= self.max_query_buffer
        ):
            pos = _parse_simple(buf, commands)
        end = len(buf)
        while True:
            if args is None:
                if pos >= end:
                    return pos
                if buf[pos] != 42:  # not "*": an inline command
                    inline = _inline(buf, pos, end)
                    if inline is None:
                        return pos
                    pos, argv = inline
                    if argv:
                        commands.append(argv)
                    continue
                line_end = buf.find(b"\r", pos, pos + RESP_INLINE_MAX_SIZE + 1)
                if line_end < 0 or line_end + 1 >= end:
                    _check_line(buf, pos, end, line_end, "too big mbulk count string")
                    return pos
                count = _SMALL.get(buf[pos + 1 : line_end])
                if count is None:
                    count = _length(buf, pos + 1, line_end, end, "too big mbulk count string")
                    if count is None:
                        return pos
                    if count > _INT_MAX:
                        raise _protocol_error("invalid multibulk length")
                pos = line_end + 2
                if count <= 0:
                    continue
                self._args = args = []
                self._remaining = count
                self._pending = 0
            pos = self._read_arguments(buf, pos, end, args)
            if self._remaining:
                return pos
            commands.append(args)
            self._args = args = None
            self._pending = 0

    def _read_arguments(self, buf: bytes, pos: int, end: int, args: list[bytes]) -> int:
        remaining = self._remaining
        need = self._bulk_need
        if need > 0:  # resuming at a bulk's data, whose length line was read
            self._bulk_need = -1
            args.append(buf[pos : pos + need - 2])
            pos += need
            remaining -= 1
            self._pending += need - 2 + ARGUMENT_OVERHEAD
            if self._pending > self.max_query_buffer:
                raise _query_buffer_limit()
        while remaining:
            if pos >= end:
                break
            line_end = buf.find(b"\r", pos, pos + RESP_INLINE_MAX_SIZE + 1)
            if line_end < 0 or line_end + 1 >= end:
                _check_line(buf, pos, end, line_end, "too big bulk count string")
                break
            if buf[pos] != 36:  # "$"
                if buf.find(b"\0", pos, line_end) >= 0:  # strchr() stops at a NUL
                    _check_line(buf, pos, end, -1, "too big bulk count string")
                    break
                got = bytes(buf[pos : pos + 1]).replace(b"\r", b" ").replace(b"\n", b" ")
                raise _protocol_error(b"expected '$', got '" + got + b"'")
            length = _SMALL.get(buf[pos + 1 : line_end])
            if length is None:
                length = _length(buf, pos + 1, line_end, end, "too big bulk count string")
                if length is None:
                    break
                if length < 0:
                    raise _protocol_error("invalid bulk length")
            if length > self.max_bulk_len:
                raise _protocol_error("invalid bulk length")
            data_at = line_end + 2
            if data_at + length + 2 > end:
                # Not all here yet: keep the data from its start, wait for the rest.
                self._bulk_need = length + 2
                pos = data_at
                break
            args.append(buf[data_at : data_at + length])
            self._pending += length + ARGUMENT_OVERHEAD
            if self._pending > self.max_query_buffer:
                raise _query_buffer_limit()
            pos = data_at + length + 2
            remaining -= 1
        self._remaining = remaining
        return pos


# The fast path (_parse_simple) reads bulks up to this long; the slow path the rest.
_FAST_MAX_BULK = 1024
_BULK_HEADERS = {n: b"$%d" % n for n in range(_FAST_MAX_BULK + 1)}
_MULTIBULK_COUNTS = {b"*%d" % n: n for n in range(1, 1025)}
# A command of N bytes costs at most 9 * N against the query-buffer limit (its
# arguments' bytes plus 48 per argument, each taking at least 6 bytes): buffers up to
# limit / 9 need no accounting.
_FAST_COST_FACTOR = 9
# A line the fast path may split with bytes.split(): no quotes, no NUL, no LF, no
# vertical tab or form feed (split() breaks words there, sdssplitargs() does not).
_SIMPLE_INLINE = re.compile(rb"[^\"'\x00\n\x0b\x0c]{1,%d}" % (RESP_INLINE_MAX_SIZE - 1)).fullmatch


def _parse_simple(buf: bytes, commands: list[list[bytes]]) -> int:
    """The common case, fast: complete commands whose lines end in CRLF, bulks up to
    1 KiB in canonical form, plain inline lines. Returns how many bytes it took; the
    general parser goes on from there (an odd command, a partial one at the end).

    Splitting the buffer at every CRLF once and checking each bulk's header against
    its data's length (``$<len(data)>`` exactly) gives what the general parser gives:
    a bulk whose data holds a CRLF fails the check and is left to it.
    """
    parts = buf.split(b"\r\n")
    last = len(parts) - 1  # parts[last] has no CRLF after it: never complete
    header_of = _BULK_HEADERS.get
    counts = _MULTIBULK_COUNTS
    i = 0
    while i < last:
        head = parts[i]
        count = counts.get(head)
        if count is not None:
            stop = i + 1 + 2 * count
            if stop > last:
                break
            args = parts[i + 2 : stop : 2]
            if parts[i + 1 : stop : 2] != list(map(header_of, map(len, args))):
                break
            commands.append(args)
            i = stop
        elif head[:1] == b"*":
            break
        elif not head:
            i += 1  # an empty line: no command
        elif _SIMPLE_INLINE(head) is not None:
            words = head.split()
            if words:
                commands.append(words)
            i += 1
        else:
            break
    return sum(map(len, parts[:i])) + 2 * i if i < last else len(buf) - len(parts[last])


def _query_buffer_limit() -> RespProtocolError:
    return RespProtocolError(b"", "the request outgrew the query buffer limit")


def _check_line(buf: bytes, pos: int, end: int, line_end: int, what: str) -> None:
    # A length line without its end yet: an error once it cannot end within the limit.
    if line_end < 0 and end - pos > RESP_INLINE_MAX_SIZE:
        raise _protocol_error(what)


def _length(buf: bytes, start: int, line_end: int, end: int, what: str) -> int | None:
    # The number on a length line; None when a NUL hides the line's end (see module).
    value = parse_resp_int(buf[start:line_end])
    if value is not None:
        return value
    if buf.find(b"\0", start, line_end) >= 0:
        _check_line(buf, start - 1, end, -1, what)
        return None
    kind = "multibulk" if what.startswith("too big mbulk") else "bulk"
    raise _protocol_error(f"invalid {kind} length")


def _inline(buf: bytes, pos: int, end: int) -> tuple[int, list[bytes]] | None:
    # One inline line: (next position, its words), None to wait for more bytes.
    limit = pos + RESP_INLINE_MAX_SIZE + 1
    newline = buf.find(b"\n", pos, limit)
    nul = buf.find(b"\0", pos, newline if newline >= 0 else limit)
    if newline < 0 or nul >= 0:
        if end - pos > RESP_INLINE_MAX_SIZE:
            raise _protocol_error("too big inline request")
        return None
    line_end = newline - 1 if newline > pos and buf[newline - 1] == 13 else newline
    argv = split_resp_inline(buf[pos:line_end])
    if argv is None:
        raise _protocol_error("unbalanced quotes in request")
    return newline + 1, argv


_QUOTES_OR_RARE_SPACE = re.compile(rb"[\"'\x0b\x0c]").search
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX = b"0123456789abcdefABCDEF"
_WORD_END = b" \n\r\t"
_BLANK = b" \t\n\r\x0b\x0c"


def split_resp_inline(line: bytes) -> list[bytes] | None:
    """Split an inline request line into words as Redis's ``sdssplitargs`` does.

    Words are separated by blanks; ``"..."`` takes the escapes ``\\n \\r \\t \\b \\a``,
    ``\\xHH`` and ``\\<any>``; ``'...'`` takes ``\\'``. A closing quote must be followed
    by a blank or the end. Returns None for unbalanced quotes. The line holds no NUL and
    no ``\\n`` (the parser ends lines there).
    """
    if _QUOTES_OR_RARE_SPACE(line) is None:
        return line.split()
    words: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _BLANK:
            i += 1
        if i >= n:
            return words
        word = bytearray()
        i = _split_word(line, i, n, word)
        if i < 0:
            return None
        words.append(bytes(word))


def _split_word(line: bytes, i: int, n: int, word: bytearray) -> int:
    # One word starting at i; returns where the next one may start, -1 if unbalanced.
    while i < n:
        c = line[i]
        if c in _WORD_END:
            return i + 1
        if c == 34:  # "
            i = _double_quoted(line, i + 1, n, word)
        elif c == 39:  # '
            i = _single_quoted(line, i + 1, n, word)
        else:
            word.append(c)
            i += 1
            continue
        if i < 0:
            return -1
        if i < n and line[i] not in _BLANK:  # closing quote must end the word
            return -1
        return i + 1
    return n


def _double_quoted(line: bytes, i: int, n: int, word: bytearray) -> int:
    # Returns the index just after the closing quote, -1 when there is none.
    while i < n:
        c = line[i]
        if c == 92 and i + 1 < n:  # backslash
            nxt = line[i + 1]
            if nxt == 120 and i + 3 < n and line[i + 2] in _HEX and line[i + 3] in _HEX:
                word.append(int(line[i + 2 : i + 4], 16))
                i += 4
            else:
                word.append(_ESCAPES.get(nxt, nxt))
                i += 2
        elif c == 34:
            return i + 1
        else:
            word.append(c)
            i += 1
    return -1


def _single_quoted(line: bytes, i: int, n: int, word: bytearray) -> int:
    while i < n:
        c = line[i]
        if c == 92 and i + 1 < n and line[i + 1] == 39:
            word.append(39)
            i += 2
        elif c == 39:
            return i + 1
        else:
            word.append(c)
            i += 1
    return -1


# -- replies ---------------------------------------------------------------------------

RespValue: TypeAlias = "bytes | int | Sequence[RespValue] | None"


def resp_simple(text: bytes) -> bytes:
    """A status reply, ``+text\\r\\n`` (``text`` must hold no CR or LF)."""
    return b"+" + text + b"\r\n"


def resp_error(message: bytes | str) -> bytes:
    """An error reply as Redis's ``addReplyError`` writes it.

    ``-ERR `` is prefixed unless the message starts with ``-`` (its own code, e.g.
    ``-NOPROTO ...``); CR and LF become spaces, so a client's bytes in the message
    cannot break the reply.
    """
    raw = message.encode() if isinstance(message, str) else message
    raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
    if raw.startswith(b"-"):
        return raw + b"\r\n"
    return b"-ERR " + raw + b"\r\n"


def resp_integer(value: int) -> bytes:
    """``:value\\r\\n``."""
    return b":%d\r\n" % value


def resp_bulk(data: bytes | None) -> bytes:
    """``$len\\r\\ndata\\r\\n``, or the null bulk ``$-1`` for None."""
    if data is None:
        return RESP_NULL_BULK
    return b"$%d\r\n%s\r\n" % (len(data), data)


def resp_array(items: Sequence[RespValue] | None) -> bytes:
    """A multibulk reply: bytes become bulks, ints integers, None null bulks, lists
    nested arrays; ``resp_array(None)`` is the null array ``*-1``."""
    if items is None:
        return RESP_NULL_ARRAY
    parts = [b"*%d\r\n" % len(items)]
    for item in items:
        if isinstance(item, bytes):
            parts.append(b"$%d\r\n%s\r\n" % (len(item), item))
        elif isinstance(item, int):
            parts.append(b":%d\r\n" % item)
        elif item is None:
            parts.append(RESP_NULL_BULK)
        else:
            parts.append(resp_array(item))
    return b"".join(parts)
