"""Tests for triosrv.protocols: synchronous, no trio, bytes in and bytes out."""

from __future__ import annotations

import ast
import datetime
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import triosrv.protocols
from triosrv.protocols import (
    CHARGEN_LINE_LENGTH,
    Chargen,
    Daytime,
    Discard,
    Echo,
    Protocol,
    ProtocolFactory,
    answer_method,
    chargen_line,
)

UTC = datetime.UTC
RFC_TIME = datetime.datetime(1982, 2, 22, 17, 37, 43, tzinfo=UTC)
PRINTABLE = bytes(range(32, 127))

FACTORIES: dict[str, ProtocolFactory] = {
    "echo": Echo,
    "discard": Discard,
    "chargen": Chargen,
    "daytime": lambda: Daytime(RFC_TIME),
}
all_factories = pytest.mark.parametrize("factory", list(FACTORIES.values()), ids=list(FACTORIES))

BytesLike = bytes | bytearray | memoryview
bytes_like_types = st.sampled_from([bytes, bytearray, memoryview])


def run_driver(
    protocol: Protocol,
    incoming: Iterable[bytes],
    *,
    max_bytes: int,
    output_limit: int | None = None,
) -> tuple[bytes, bool]:
    """Run the driver loop of ``_base``'s docstring against a scripted peer.

    The peer sends *incoming*, one chunk per receive, then EOF. Returns everything the
    protocol sent and whether it asked to close; stops early, without closing, once
    *output_limit* bytes were sent. A protocol that reads again after EOF makes
    ``receive_data`` raise, which fails the test.
    """
    chunks = iter(incoming)
    sent = bytearray()
    while True:
        out = protocol.data_to_send(max_bytes)
        if out:
            assert type(out) is bytes
            assert len(out) <= max_bytes
            sent += out
            if output_limit is not None and len(sent) >= output_limit:
                return bytes(sent), False
        elif protocol.close_after_flush:
            return bytes(sent), True
        else:
            protocol.receive_data(next(chunks, b""))


def drain(protocol: Protocol, max_bytes: int) -> bytes:
    """Take everything *protocol* has to send right now, *max_bytes* at a time."""
    out = bytearray()
    while chunk := protocol.data_to_send(max_bytes):
        assert len(chunk) <= max_bytes
        out += chunk
    return bytes(out)


def chargen_stream(size: int) -> bytes:
    """The first *size* bytes of the chargen stream, built line by line."""
    lines = (chargen_line(n) for n in range(size // (CHARGEN_LINE_LENGTH + 2) + 1))
    return b"".join(lines)[:size]


# -- the common contract ----------------------------------------------------------------


def test_protocol_is_abstract() -> None:
    with pytest.raises(TypeError):
        Protocol()  # type: ignore[abstract]


@all_factories
@pytest.mark.parametrize("max_bytes", [0, -1])
def test_protocol_rejects_max_bytes_below_one(factory: ProtocolFactory, max_bytes: int) -> None:
    with pytest.raises(ValueError, match="max_bytes >= 1"):
        factory().data_to_send(max_bytes)


@all_factories
def test_protocol_rejects_data_after_eof(factory: ProtocolFactory) -> None:
    protocol = factory()
    protocol.receive_data(b"")
    with pytest.raises(ValueError, match="after EOF"):
        protocol.receive_data(b"late")


@all_factories
def test_protocol_rejects_second_eof(factory: ProtocolFactory) -> None:
    protocol = factory()
    protocol.receive_data(b"")
    with pytest.raises(ValueError, match="after EOF"):
        protocol.receive_data(b"")


@all_factories
@given(
    incoming=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    max_bytes=st.integers(1, 9000),
)
def test_protocol_never_reads_after_eof_under_driver(
    factory: ProtocolFactory, incoming: list[bytes], max_bytes: int
) -> None:
    # run_driver fails with ValueError if the loop would receive again after EOF.
    run_driver(factory(), incoming, max_bytes=max_bytes, output_limit=20_000)


def run_fast_driver(
    protocol: Protocol, incoming: Iterable[bytes], *, max_bytes: int, output_limit: int
) -> tuple[bytes, bool]:
    """`run_driver`, but receiving through the ``answer`` fast path where the protocol
    has one, and checking the promise of every answer it gives. Like the real drivers
    it gives ``answer`` only chunks no longer than ``max_bytes``."""
    answer = answer_method(protocol)
    chunks = iter(incoming)
    sent = bytearray()
    while len(sent) < output_limit:
        out = protocol.data_to_send(max_bytes)
        if out:
            sent += out
        elif protocol.close_after_flush:
            return bytes(sent), True
        else:
            data = next(chunks, b"")
            fast = answer is not None and 0 < len(data) <= max_bytes
            reply = answer(data, max_bytes) if fast else None
            if reply is None:
                protocol.receive_data(data)
                continue
            assert type(reply) is bytes
            assert len(reply) <= max_bytes
            # The promise: nothing else pending, not closing.
            assert protocol.data_to_send(max_bytes) == b""
            assert not protocol.close_after_flush
            sent += reply
    return bytes(sent), False


@all_factories
@given(
    incoming=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    max_bytes=st.integers(1, 600),
)
def test_protocol_answer_fast_path_changes_nothing_but_the_calls(
    factory: ProtocolFactory, incoming: list[bytes], max_bytes: int
) -> None:
    plain = run_driver(factory(), incoming, max_bytes=max_bytes, output_limit=20_000)
    fast = run_fast_driver(factory(), incoming, max_bytes=max_bytes, output_limit=20_000)
    assert fast == plain


def test_answer_method_finds_the_fast_path_only_where_there_is_one() -> None:
    echo, discard = Echo(), Discard()
    assert answer_method(echo) == echo.answer
    assert answer_method(discard) == discard.answer
    assert answer_method(Chargen()) is None
    assert answer_method(Daytime(RFC_TIME)) is None

    class DuckTyped:  # the contract, without subclassing Protocol
        answer = None

    assert answer_method(DuckTyped()) is None


def protocol_sources() -> list[Path]:
    return sorted(Path(triosrv.protocols.__file__).parent.glob("*.py"))


# Imports (no trio, socket or time here) are checked by import-linter: tests/test_layers.py.


def test_protocols_read_no_clock() -> None:
    clock_reads = {"now", "utcnow", "today", "fromtimestamp"}
    for path in protocol_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in clock_reads, f"{path.name}:{node.lineno}"


def test_protocols_every_module_imports() -> None:
    names = [info.name for info in pkgutil.iter_modules(triosrv.protocols.__path__)]
    assert {"_base", "_echo", "_discard", "_chargen", "_daytime"} <= set(names)
    for name in names:
        importlib.import_module(f"triosrv.protocols.{name}")


def test_protocols_reexport_all_public_names() -> None:
    for name in triosrv.protocols.__all__:
        assert hasattr(triosrv.protocols, name), name
    assert set(triosrv.protocols.__all__) == {
        "Protocol",
        "Echo",
        "Discard",
        "Chargen",
        "Daytime",
        "ProtocolFactory",
        "Answer",
        "answer_method",
        "CHARGEN_LINE_LENGTH",
        "chargen_line",
        # the PROXY protocol (tests/test_proxy_protocol.py)
        "PROXY_V1_MAX_LENGTH",
        "PROXY_V2_SIGNATURE",
        "ProxyHeader",
        "ProxyProtocolError",
        "encode_proxy_v1",
        "encode_proxy_v2",
        "parse_proxy_header",
        # the framers (tests/test_framing.py)
        "Framer",
        "LineFramer",
        "LengthPrefixFramer",
        "NetstringFramer",
        "NoFrame",
        "NEED_DATA",
        "END_OF_STREAM",
        "FramingError",
        "FrameTooLongError",
        "MalformedFrameError",
        "IncompleteFrameError",
        "encode_varint",
        "decode_varint",
        # RESP2, the Redis protocol (tests/test_resp.py)
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
    }


# -- echo -------------------------------------------------------------------------------

echo_operations = st.lists(
    st.one_of(
        st.tuples(st.binary(min_size=1, max_size=100), bytes_like_types),
        st.integers(1, 120),
    ),
    max_size=30,
)


@given(operations=echo_operations, final_max_bytes=st.integers(1, 120))
def test_echo_round_trips_any_chunking_and_max_bytes(
    operations: list[tuple[bytes, Callable[[bytes], BytesLike]] | int], final_max_bytes: int
) -> None:
    echo = Echo()
    received = bytearray()
    sent = bytearray()
    for operation in operations:
        if isinstance(operation, int):
            out = echo.data_to_send(operation)
            assert type(out) is bytes
            assert len(out) <= operation
            sent += out
        else:
            data, kind = operation
            echo.receive_data(kind(data))
            received += data
        assert not echo.close_after_flush
    echo.receive_data(b"")
    sent += drain(echo, final_max_bytes)
    assert sent == received
    assert echo.close_after_flush
    assert echo.data_to_send(final_max_bytes) == b""


@given(
    incoming=st.lists(st.binary(min_size=1, max_size=200), max_size=10),
    max_bytes=st.integers(1, 250),
)
def test_echo_driver_loop_echoes_everything_then_closes(
    incoming: list[bytes], max_bytes: int
) -> None:
    sent, closed = run_driver(Echo(), incoming, max_bytes=max_bytes)
    assert sent == b"".join(incoming)
    assert closed


def test_echo_returns_same_object_on_fast_path() -> None:
    echo = Echo()
    for size in (1, 64, 4096):
        chunk = bytes(range(256)) * 16
        chunk = chunk[:size]
        echo.receive_data(chunk)
        assert echo.data_to_send(4096) is chunk
        assert echo.data_to_send(4096) == b""


def test_echo_returns_same_object_when_chunk_fills_max_bytes() -> None:
    echo = Echo()
    chunk = b"x" * 100
    echo.receive_data(chunk)
    assert echo.data_to_send(100) is chunk


def test_echo_splits_chunk_longer_than_max_bytes() -> None:
    echo = Echo()
    echo.receive_data(b"abcdefghij")
    assert [echo.data_to_send(4) for _ in range(4)] == [b"abcd", b"efgh", b"ij", b""]


def test_echo_joins_chunks_that_pile_up() -> None:
    echo = Echo()
    echo.receive_data(b"abc")
    echo.receive_data(b"def")
    echo.receive_data(b"gh")
    assert echo.data_to_send(100) == b"abcdefgh"
    # Drained: back on the fast path.
    chunk = b"next"
    echo.receive_data(chunk)
    assert echo.data_to_send(100) is chunk


def test_echo_copies_mutable_input() -> None:
    echo = Echo()
    buffer = bytearray(b"hello")
    echo.receive_data(buffer)
    echo.receive_data(memoryview(buffer)[1:3])
    buffer[:] = b"XXXXX"
    assert echo.data_to_send(100) == b"helloel"


def test_echo_answer_returns_the_chunk_itself_when_nothing_is_buffered() -> None:
    echo = Echo()
    data = b"ping" * 16
    assert echo.answer(data, 64) is data


def test_echo_answer_declines_when_bytes_wait() -> None:
    # (A chunk longer than max_bytes never comes: the driver vouches for that.)
    echo = Echo()
    assert echo.answer(b"x" * 64, 64) == b"x" * 64
    echo.receive_data(b"queued")
    assert echo.answer(b"next", 64) is None  # would overtake the queued bytes
    assert drain(echo, 64) == b"queued"
    echo.receive_data(b"")
    assert echo.answer(b"late", 64) is None  # after EOF: receive_data must raise
    # EOF while bytes wait: taking them does not reopen the fast path, whether they
    # waited as one chunk or (longer than max_bytes) in the buffer.
    for queued in (b"tail", b"x" * 100):
        echo = Echo()
        echo.receive_data(queued)
        echo.receive_data(b"")
        assert drain(echo, 64) == queued
        assert echo.close_after_flush
        assert echo.answer(b"late", 64) is None


def test_discard_answer_counts_and_sends_nothing() -> None:
    discard = Discard()
    assert discard.answer(b"abc", 64) == b""
    assert discard.bytes_discarded == 3
    discard.receive_data(b"")
    assert discard.answer(b"late", 1) is None


def test_echo_flushes_buffer_after_eof_then_closes() -> None:
    echo = Echo()
    echo.receive_data(b"last words")
    echo.receive_data(b"")
    assert not echo.close_after_flush
    assert echo.data_to_send(5) == b"last "
    assert not echo.close_after_flush
    assert echo.data_to_send(5) == b"words"
    assert echo.close_after_flush
    assert echo.data_to_send(5) == b""


def test_echo_closes_on_eof_with_nothing_buffered() -> None:
    echo = Echo()
    assert not echo.close_after_flush
    echo.receive_data(b"")
    assert echo.close_after_flush
    assert echo.data_to_send(10) == b""


def test_echo_sends_nothing_before_input() -> None:
    echo = Echo()
    assert echo.data_to_send(10) == b""
    assert not echo.close_after_flush


# -- discard ----------------------------------------------------------------------------


def test_discard_never_sends_and_counts_bytes() -> None:
    discard = Discard()
    for data in (b"abc", bytearray(b"de"), memoryview(b"fghi")):
        discard.receive_data(data)
        assert discard.data_to_send(1000) == b""
        assert not discard.close_after_flush
    assert discard.bytes_discarded == 9


def test_discard_counts_memoryview_bytes_not_items() -> None:
    discard = Discard()
    discard.receive_data(memoryview(b"\0" * 8).cast("i"))
    assert discard.bytes_discarded == 8


def test_discard_closes_after_eof() -> None:
    discard = Discard()
    discard.receive_data(b"abc")
    discard.receive_data(b"")
    assert discard.close_after_flush
    assert discard.data_to_send(1000) == b""
    assert discard.bytes_discarded == 3


def test_discard_driver_loop_sends_nothing_then_closes() -> None:
    assert run_driver(Discard(), [b"a" * 10, b"b" * 7], max_bytes=4) == (b"", True)


# -- chargen ----------------------------------------------------------------------------


def test_chargen_line_zero_is_first_72_printable_characters() -> None:
    line = chargen_line(0)
    assert line == PRINTABLE[:72] + b"\r\n"
    assert line.startswith(b" !\"#$%&'()*+,-./0123456789:;<=>?@ABC")
    assert len(line) == CHARGEN_LINE_LENGTH + 2 == 74


def test_chargen_line_wraps_around_the_printable_characters() -> None:
    assert chargen_line(1) == PRINTABLE[1:73] + b"\r\n"
    assert chargen_line(30) == PRINTABLE[30:] + PRINTABLE[:7] + b"\r\n"
    assert chargen_line(94) == b"~" + PRINTABLE[:71] + b"\r\n"


def test_chargen_line_95_equals_line_zero() -> None:
    assert chargen_line(95) == chargen_line(0)
    assert chargen_line(95 * 7 + 3) == chargen_line(3)


def test_chargen_line_rejects_negative() -> None:
    with pytest.raises(ValueError, match="start at 0"):
        chargen_line(-1)


@given(sizes=st.lists(st.integers(1, 16_000), min_size=1, max_size=12))
def test_chargen_stream_matches_rfc_pattern(sizes: list[int]) -> None:
    chargen = Chargen()
    stream = bytearray()
    for size in sizes:
        out = chargen.data_to_send(size)
        assert type(out) is bytes
        assert len(out) == size
        stream += out
    assert stream == chargen_stream(len(stream))


def test_chargen_stream_repeats_every_95_lines() -> None:
    cycle = 95 * (CHARGEN_LINE_LENGTH + 2)
    stream = Chargen().data_to_send(3 * cycle + 10)
    assert stream[:cycle] == stream[cycle : 2 * cycle] == stream[2 * cycle : 3 * cycle]
    assert stream[3 * cycle :] == chargen_line(0)[:10]


def test_chargen_ignores_input_and_keeps_sending_after_eof() -> None:
    chargen = Chargen()
    first = chargen.data_to_send(100)
    chargen.receive_data(b"ignored")
    chargen.receive_data(b"")
    assert not chargen.close_after_flush
    assert first + chargen.data_to_send(100) == chargen_stream(200)
    assert not chargen.close_after_flush


def test_chargen_driver_loop_never_closes() -> None:
    sent, closed = run_driver(Chargen(), [b"x"], max_bytes=1000, output_limit=10_000)
    assert not closed
    assert sent == chargen_stream(10_000)


# -- daytime ----------------------------------------------------------------------------


def test_daytime_formats_aware_utc_time() -> None:
    assert Daytime(RFC_TIME).data_to_send(1000) == b"Monday, February 22, 1982 17:37:43-UTC\r\n"


def test_daytime_formats_naive_time_without_zone() -> None:
    naive = datetime.datetime(2024, 1, 5, 3, 4, 5)
    assert Daytime(naive).data_to_send(1000) == b"Friday, January 05, 2024 03:04:05\r\n"


def test_daytime_formats_fixed_offset_zone() -> None:
    zone = datetime.timezone(datetime.timedelta(hours=-8), "PST")
    when = datetime.datetime(1982, 2, 22, 17, 37, 43, tzinfo=zone)
    assert Daytime(when).data_to_send(1000) == b"Monday, February 22, 1982 17:37:43-PST\r\n"


@given(when=st.datetimes(min_value=datetime.datetime(1000, 1, 1), timezones=st.just(UTC)))
def test_daytime_matches_strftime_in_c_locale(when: datetime.datetime) -> None:
    # Python leaves LC_TIME at "C", where strftime's names are the English ones.
    expected = when.strftime("%A, %B %d, %Y %H:%M:%S-%Z").encode("ascii") + b"\r\n"
    assert Daytime(when).data_to_send(1000) == expected


def test_daytime_line_is_ascii_whatever_the_zone_name() -> None:
    zone = datetime.timezone(datetime.timedelta(hours=1), "Zürich")
    when = datetime.datetime(2024, 1, 5, 3, 4, 5, tzinfo=zone)
    assert Daytime(when).data_to_send(1000).endswith(b"-Z?rich\r\n")


def test_daytime_splits_line_then_closes() -> None:
    daytime = Daytime(RFC_TIME)
    parts = []
    while not daytime.close_after_flush:
        part = daytime.data_to_send(7)
        assert 0 < len(part) <= 7
        parts.append(part)
    assert b"".join(parts) == b"Monday, February 22, 1982 17:37:43-UTC\r\n"
    assert daytime.data_to_send(7) == b""


def test_daytime_ignores_input() -> None:
    daytime = Daytime(RFC_TIME)
    daytime.receive_data(b"what time is it?")
    daytime.receive_data(b"")
    assert not daytime.close_after_flush
    assert daytime.data_to_send(1000) == b"Monday, February 22, 1982 17:37:43-UTC\r\n"
    assert daytime.close_after_flush


def test_daytime_driver_loop_sends_one_line_then_closes() -> None:
    sent, closed = run_driver(Daytime(RFC_TIME), [], max_bytes=16)
    assert sent == b"Monday, February 22, 1982 17:37:43-UTC\r\n"
    assert closed
