"""Tests for triosrv.protocols' RESP2 parser and encoders: synchronous, bytes in and out.

The byte-for-byte agreement with a real redis-server is in test_minikv_differential.py;
here: the parser's own rules, limits, and hypothesis fuzzing (any bytes, any chunking).
"""

from __future__ import annotations

from collections.abc import Iterable
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import triosrv.protocols._resp
from triosrv.protocols import (
    RESP_INLINE_MAX_SIZE,
    RESP_NULL_BULK,
    RespParser,
    parse_resp_int,
    resp_array,
    resp_bulk,
    resp_error,
    resp_integer,
    resp_simple,
    split_resp_inline,
)


def encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def parse_all(chunks: Iterable[bytes], **limits: int) -> tuple[list[list[bytes]], bytes | None]:
    """Every command, and the error reply (None: no error) of a stream fed in chunks."""
    parser = RespParser(**limits)
    commands: list[list[bytes]] = []
    for chunk in chunks:
        commands += parser.feed(chunk)
    return commands, None if parser.error is None else parser.error.reply


def error_of(data: bytes, **limits: int) -> bytes | None:
    return parse_all([data], **limits)[1]


def test_resp_parser_multibulk_and_pipelining() -> None:
    data = encode(b"SET", b"k", b"v\r\n\x00") + encode(b"GET", b"k") + encode(b"PING")
    assert parse_all([data]) == ([[b"SET", b"k", b"v\r\n\x00"], [b"GET", b"k"], [b"PING"]], None)


def test_resp_parser_inline_commands() -> None:
    data = b"PING\r\nSET k \"a b\\x41\\n\"\nECHO 'it\\'s'\r\n\r\n   \r\nGET  k \r\n"
    assert parse_all([data]) == (
        [[b"PING"], [b"SET", b"k", b"a bA\n"], [b"ECHO", b"it's"], [b"GET", b"k"]],
        None,
    )


def test_resp_parser_empty_multibulk_is_skipped() -> None:
    assert parse_all([b"*0\r\n*-1\r\n" + encode(b"PING")]) == ([[b"PING"]], None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*x\r\n", b"invalid multibulk length"),
        (b"*3000000000\r\n", b"invalid multibulk length"),
        (b"*1\r\n$x\r\n", b"invalid bulk length"),
        (b"*1\r\n$-1\r\n", b"invalid bulk length"),
        (b"*1\r\n$01\r\n", b"invalid bulk length"),
        (b"*1\r\n:1\r\n", b"expected '$', got ':'"),
        (b'ECHO "open\r\n', b"unbalanced quotes in request"),
        (b"ECHO 'a'b\r\n", b"unbalanced quotes in request"),
        (b"x" * (RESP_INLINE_MAX_SIZE + 1), b"too big inline request"),
        (b"*" + b"1" * RESP_INLINE_MAX_SIZE, b"too big mbulk count string"),
        (b"*1\r\n$" + b"1" * RESP_INLINE_MAX_SIZE, b"too big bulk count string"),
    ],
)
def test_resp_parser_protocol_errors(data: bytes, message: bytes) -> None:
    assert error_of(data) == b"-ERR Protocol error: " + message + b"\r\n"


def test_resp_parser_commands_before_an_error_are_returned() -> None:
    commands, error = parse_all([encode(b"PING") + b"*x\r\n" + encode(b"PING")])
    assert commands == [[b"PING"]]
    assert error == b"-ERR Protocol error: invalid multibulk length\r\n"


def test_resp_parser_nothing_after_an_error() -> None:
    parser = RespParser()
    assert parser.feed(b"*x\r\n") == []
    assert parser.feed(encode(b"PING")) == []
    assert parser.error is not None


def test_resp_parser_line_just_under_the_limit_waits() -> None:
    parser = RespParser()
    assert parser.feed(b"x" * RESP_INLINE_MAX_SIZE) == []
    assert parser.error is None
    assert parser.feed(b"\n") == [[b"x" * RESP_INLINE_MAX_SIZE]]


def test_resp_parser_nul_hides_a_line_end_like_strchr() -> None:
    parser = RespParser()
    assert parser.feed(b"PING\x00\r\n") == []
    assert parser.error is None
    assert parser.feed(b"y" * RESP_INLINE_MAX_SIZE) == []
    assert parser.error is not None
    assert parser.error.reply == b"-ERR Protocol error: too big inline request\r\n"


def test_resp_parser_bulk_over_max_bulk_len() -> None:
    assert error_of(b"*1\r\n$11\r\n", max_bulk_len=10) == (
        b"-ERR Protocol error: invalid bulk length\r\n"
    )
    assert parse_all([encode(b"x" * 10)], max_bulk_len=10) == ([[b"x" * 10]], None)


def test_resp_parser_query_buffer_limit_closes_without_reply() -> None:
    limit = 10_000
    parser = RespParser(max_query_buffer=limit)
    assert parser.feed(b"*2\r\n$3\r\nSET\r\n$20000\r\n" + b"v" * 5000) == []
    assert parser.error is None
    assert parser.buffered <= limit
    assert parser.feed(b"v" * 6000) == []
    assert parser.error is not None and parser.error.reply == b""
    assert parser.buffered == 0


def test_resp_parser_many_small_arguments_count_against_the_limit() -> None:
    # A million one-byte arguments cost far more than a million bytes in Python.
    parser = RespParser(max_query_buffer=100_000)
    parser.feed(b"*1000000\r\n")
    for _ in range(100):
        parser.feed(b"$1\r\nx\r\n" * 100)
        if parser.error is not None:
            break
    assert parser.error is not None and parser.error.reply == b""


def test_resp_parser_large_bulk_in_many_chunks() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB
    data = encode(b"SET", b"k", value)
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    assert parse_all(chunks) == ([[b"SET", b"k", value]], None)


def test_resp_parser_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        RespParser(max_bulk_len=0)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"0", 0),
        (b"-1", -1),
        (b"9223372036854775807", 2**63 - 1),
        (b"-9223372036854775808", -(2**63)),
        (b"9223372036854775808", None),
        (b"-0", None),
        (b"+1", None),
        (b"01", None),
        (b" 1", None),
        (b"1_0", None),
        (b"\xd9\xa8", None),
        (b"", None),
        (b"-", None),
    ],
)
def test_parse_int64_is_redis_string2ll(text: bytes, value: int | None) -> None:
    assert parse_resp_int(text) == value


def test_split_inline_quotes_and_blanks() -> None:
    assert split_resp_inline(b"a\x0bb \x0bc") == [b"a\x0bb", b"c"]
    assert split_resp_inline(b'"\\x4" x') == [b"x4", b"x"]
    assert split_resp_inline(b'"a"\x0cb') == [b"a", b"b"]
    assert split_resp_inline(b'"a\\') is None
    assert split_resp_inline(b"") == []


def test_encoders() -> None:
    assert resp_simple(b"OK") == b"+OK\r\n"
    assert resp_error("boom\r\nx") == b"-ERR boom  x\r\n"
    assert resp_error(b"-NOPROTO no") == b"-NOPROTO no\r\n"
    assert resp_integer(-5) == b":-5\r\n"
    assert resp_bulk(None) == RESP_NULL_BULK
    assert resp_bulk(b"a\r\n") == b"$3\r\na\r\n\r\n"
    assert resp_array([b"a", 1, None, [b"b"], []]) == (
        b"*5\r\n$1\r\na\r\n:1\r\n$-1\r\n*1\r\n$1\r\nb\r\n*0\r\n"
    )
    assert resp_array(None) == b"*-1\r\n"


# -- fuzzing ---------------------------------------------------------------------------

# Bytes that make the parser take every branch: RESP markers, digits, line ends, NULs,
# quotes, escapes, blanks.
ALPHABET = b"*$:+-0123456789\r\n\x00\"'\\x \t\x0bPINGab"
resp_bytes = st.lists(st.sampled_from(list(ALPHABET)), max_size=300).map(bytes) | st.binary(
    max_size=300
)
commands = st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=5), max_size=8)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=400, deadline=None)
@given(data=resp_bytes, cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_resp_parser_any_bytes_any_chunking_same_result(data: bytes, cuts: list[int]) -> None:
    limits = {"max_bulk_len": 64, "max_query_buffer": 400}
    whole = parse_all([data], **limits)
    assert parse_all(split(data, cuts), **limits) == whole
    assert parse_all([bytes([b]) for b in data], **limits) == whole


@settings(max_examples=200, deadline=None)
@given(script=commands, cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_resp_parser_round_trips_encoded_commands(
    script: list[list[bytes]], cuts: list[int]
) -> None:
    data = b"".join(encode(*argv) for argv in script)
    assert parse_all(split(data, cuts)) == (script, None)


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=2000), max_size=30))
def test_resp_parser_memory_stays_bounded(chunks: list[bytes]) -> None:
    limit = 4096
    parser = RespParser(max_bulk_len=1000, max_query_buffer=limit)
    for chunk in [b"*100\r\n$900\r\n", *chunks]:
        parser.feed(chunk)
        # Unparsed bytes: at most a line (64 KiB) or the rest of a bulk, plus one chunk.
        assert parser.buffered <= limit + RESP_INLINE_MAX_SIZE + len(chunk)


# Whole buffers take the fast path (complete commands split at CRLF); bytes fed one at a
# time take the general one. Both must agree on everything, including the odd inputs.
odd_commands = st.lists(
    st.one_of(
        commands.map(lambda script: b"".join(encode(*argv) for argv in script)),
        st.sampled_from(
            [
                b"PING\r\n",
                b"\r\n",
                b"  \r\n",
                b"*0\r\n",
                b"*-1\r\n",
                b"*01\r\n",
                b"$3\r\n",
                b"*1\r\n$3\r\nab\r\n\r\n",
                b"a\x0bb\r\n",
                b"'x'\r\n",
                b'"y\r\n',
                b"x\ny\r\n",
                b"*2\r\n$1\r\na\r\n",
                b"*1\r\n$2\r\nab",
                b"\x00\r\n",
                b"*1\r\n$1\r\n\r\r\n",
            ]
        ),
        resp_bytes,
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(data=odd_commands)
def test_resp_parser_fast_path_agrees_with_the_general_one(data: bytes) -> None:
    with mock.patch.object(triosrv.protocols._resp, "_FAST_MAX_BULK", 2**62):  # no fast path
        general = parse_all([data])
        assert parse_all([bytes([b]) for b in data]) == general
    assert parse_all([data]) == general
