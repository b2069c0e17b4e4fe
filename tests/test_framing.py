"""Tests for the sans-IO framers of triosrv.protocols: synchronous, bytes in, frames out."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triosrv.protocols import (
    END_OF_STREAM,
    NEED_DATA,
    Framer,
    FrameTooLongError,
    FramingError,
    IncompleteFrameError,
    LengthPrefixFramer,
    LineFramer,
    MalformedFrameError,
    NetstringFramer,
    decode_varint,
    encode_varint,
)

# Small limits, so that hypothesis reaches them; each config is (name, factory).
FRAMERS: dict[str, Callable[[], Framer]] = {
    "lines-lf": lambda: LineFramer(max_length=12),
    "lines-exact-crlf": lambda: LineFramer(delimiter=b"\r\n", max_length=12),
    "lines-overlapping-delim": lambda: LineFramer(delimiter=b"aab", max_length=12),
    "lines-strict": lambda: LineFramer(crlf="strict", max_length=12),
    "lines-lenient": lambda: LineFramer(crlf="lenient", max_length=12),
    "prefix-1": lambda: LengthPrefixFramer(1, max_length=12),
    "prefix-2-little": lambda: LengthPrefixFramer(2, byteorder="little", max_length=300),
    "prefix-4": lambda: LengthPrefixFramer(4, max_length=12),
    "prefix-8": lambda: LengthPrefixFramer(8, max_length=12),
    "varint": lambda: LengthPrefixFramer("varint", max_length=300),
    "netstring": lambda: NetstringFramer(max_length=12),
}

Outcome = tuple[list[bytes], str]


def run(framer: Framer, chunks: Iterable[bytes], *, bound: int | None = None) -> Outcome:
    """Drive *framer* as the module docstring's loop does: feed a chunk, take every frame.

    Returns the frames and how it ended: "END" or "<error type>: <message>". With
    *bound*, checks that after each drain the framer holds fewer than *bound* bytes.
    """
    frames: list[bytes] = []
    for chunk in [*chunks, b""]:
        framer.receive_data(chunk)
        while True:
            try:
                frame = framer.next_frame()
            except FramingError as exc:
                assert framer.buffered == 0  # freed at the error
                return frames, f"{type(exc).__name__}: {exc}"
            if frame is NEED_DATA:
                break
            if frame is END_OF_STREAM:
                return frames, "END"
            assert type(frame) is bytes
            frames.append(frame)
        if bound is not None:
            assert framer.buffered < bound
    raise AssertionError("EOF was fed but the framer never ended")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# Bytes that matter to some framer: delimiters, digits, colon, comma, high bits.
INTERESTING = b"\r\n\x00\x01\x02\x05\x0c\x7f\x80\x81\xff0123:,aab x"
noise = st.binary(max_size=20) | st.lists(st.sampled_from(INTERESTING), max_size=20).map(bytes)


@st.composite
def streams(draw: st.DrawFn, factory: Callable[[], Framer]) -> bytes:
    """A stream of valid frames of *factory*'s framer, with noise here and there."""
    framer = factory()
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            payload = draw(st.binary(max_size=framer.max_length + 2) | noise)
            try:
                parts.append(framer.frame(payload))
            except ValueError:
                parts.append(payload)
        else:
            parts.append(draw(noise))
    return b"".join(parts)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(FRAMERS)), data=st.data())
def test_framers_chunking_does_not_change_frames_or_errors(name: str, data: st.DataObject) -> None:
    factory = FRAMERS[name]
    stream = data.draw(streams(factory))
    cuts = data.draw(st.lists(st.integers(0, 1000), max_size=8))
    whole = run(factory(), [stream])
    assert run(factory(), split(stream, cuts), bound=factory().max_length + 16) == whole
    assert run(factory(), [stream[i : i + 1] for i in range(len(stream))]) == whole


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(FRAMERS)), data=st.data())
def test_framers_round_trip(name: str, data: st.DataObject) -> None:
    factory = FRAMERS[name]
    framer = factory()
    payloads = data.draw(st.lists(st.binary(max_size=framer.max_length) | noise, max_size=8))
    sendable = []
    wire = b""
    for payload in payloads:
        try:
            wire += framer.frame(payload)
        except ValueError:
            continue  # holds its own delimiter, or too long: frame() refused it
        sendable.append(payload)
    cuts = data.draw(st.lists(st.integers(0, 1000), max_size=8))
    assert run(factory(), split(wire, cuts)) == (sendable, "END")


@pytest.mark.parametrize("name", sorted(FRAMERS))
def test_framers_bounded_on_an_endless_frame(name: str) -> None:
    # A peer that sends 1 MiB of 0xff (no delimiter; as a header, a huge length) is
    # refused after at most max_length + header bytes, and nothing else is kept.
    framer = FRAMERS[name]()
    chunk = b"\xff" * 1000
    for _ in range(1024):
        framer.receive_data(chunk)
        try:
            assert framer.next_frame() is NEED_DATA
        except (FrameTooLongError, MalformedFrameError):
            break
        assert framer.buffered <= framer.max_length + 16 + len(chunk)
    else:
        raise AssertionError("1 MiB with no frame end was never refused")
    framer.receive_data(chunk * 100)
    assert framer.buffered == 0  # data after an error is dropped
    with pytest.raises(FramingError):
        framer.next_frame()  # sticky


def frames_of(framer: Framer, data: bytes) -> Outcome:
    return run(framer, [data])


def test_line_framer_exact_delimiter() -> None:
    framer = LineFramer(delimiter=b"\r\n", max_length=5)
    assert frames_of(framer, b"a\r\nhello\r\n\r\nb\nc\r\n") == (
        [b"a", b"hello", b"", b"b\nc"],
        "END",
    )


def test_line_framer_limit_counts_the_payload_only() -> None:
    assert frames_of(LineFramer(max_length=3), b"abc\n") == ([b"abc"], "END")
    frames, end = frames_of(LineFramer(max_length=3), b"ab\nabcd\n")
    assert frames == [b"ab"]
    assert end == "FrameTooLongError: line is longer than the limit of 3 bytes"


def test_line_framer_refuses_a_long_line_before_its_end_arrives() -> None:
    framer = LineFramer(max_length=3)
    framer.receive_data(b"abc")
    assert framer.next_frame() is NEED_DATA
    framer.receive_data(b"d")
    with pytest.raises(FrameTooLongError) as info:
        framer.next_frame()
    assert info.value.max_length == 3
    assert info.value.length is None


def test_line_framer_strict_crlf_refuses_bare_cr_and_lf() -> None:
    strict = dict(crlf="strict", max_length=10)
    assert frames_of(LineFramer(**strict), b"a b\r\n\r\n") == ([b"a b", b""], "END")  # type: ignore[arg-type]
    for bad, what in [(b"a\nb\r\n", "LF"), (b"a\rb\r\n", "CR"), (b"\n", "LF")]:
        frames, end = frames_of(LineFramer(**strict), b"ok\r\n" + bad)  # type: ignore[arg-type]
        assert frames == [b"ok"]
        assert end == f"MalformedFrameError: bare {what} in a line (only CRLF may end one)"


def test_line_framer_strict_waits_to_see_what_follows_a_cr() -> None:
    framer = LineFramer(crlf="strict")
    framer.receive_data(b"abc\r")
    assert framer.next_frame() is NEED_DATA
    framer.receive_data(b"\n")
    assert framer.next_frame() == b"abc"


def test_line_framer_lenient_crlf() -> None:
    framer = LineFramer(crlf="lenient", max_length=3)
    assert frames_of(framer, b"abc\r\nabc\na\rb\n\r\r\n") == (
        [b"abc", b"abc", b"a\rb", b"\r"],
        "END",
    )
    assert LineFramer(crlf="lenient").frame(b"x") == b"x\r\n"
    for wire in (b"abcd\r\n", b"abcd\n", b"abc\r\r\n", b"abcdef"):
        _, end = frames_of(LineFramer(crlf="lenient", max_length=3), wire)
        assert end == "FrameTooLongError: line is longer than the limit of 3 bytes"


def test_line_framer_unterminated_last_line_is_incomplete() -> None:
    framer = LineFramer()
    framer.receive_data(b"one\ntw")
    framer.receive_data(b"")
    assert framer.next_frame() == b"one"
    with pytest.raises(IncompleteFrameError) as info:
        framer.next_frame()
    assert info.value.received == 2
    assert str(info.value) == "the peer closed the stream 2 bytes into a line"


def test_line_framer_frame_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match="cannot frame"):
        LineFramer().frame(b"a\nb")
    with pytest.raises(ValueError, match="cannot frame"):
        LineFramer(crlf="strict").frame(b"a\r")
    with pytest.raises(ValueError, match="cannot frame"):
        LineFramer(delimiter=b"aa").frame(b"xa")  # "xaaa" would end at "x"
    with pytest.raises(ValueError, match="over max_length=2"):
        LineFramer(max_length=2).frame(b"abc")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"delimiter": b""}, ValueError),
        ({"delimiter": "\n"}, ValueError),
        ({"crlf": "loose"}, ValueError),
        ({"crlf": "strict", "delimiter": b"\n"}, ValueError),
        ({"max_length": -1}, ValueError),
        ({"max_length": 1.5}, TypeError),
        ({"max_length": True}, TypeError),
    ],
)
def test_line_framer_refuses_bad_arguments(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        LineFramer(**kwargs)  # type: ignore[arg-type]


def test_length_prefix_framer_byte_orders_and_sizes() -> None:
    assert LengthPrefixFramer().frame(b"hi") == b"\x00\x00\x00\x02hi"
    assert LengthPrefixFramer(2, byteorder="little").frame(b"hi") == b"\x02\x00hi"
    assert LengthPrefixFramer(1).frame(b"") == b"\x00"
    assert LengthPrefixFramer(8).frame(b"x") == b"\x00" * 7 + b"\x01x"
    assert LengthPrefixFramer("varint").frame(b"x" * 300)[:2] == b"\xac\x02"
    wire = b"\x00\x02hi\x00\x00\x00\x03abc"
    assert frames_of(LengthPrefixFramer(2), wire) == ([b"hi", b"", b"abc"], "END")


def test_length_prefix_framer_refuses_a_long_frame_from_its_header() -> None:
    framer = LengthPrefixFramer(4, max_length=1000)
    framer.receive_data(b"\x7f\xff\xff\xff")  # announces 2 GiB; none of it is buffered
    with pytest.raises(FrameTooLongError) as info:
        framer.next_frame()
    assert (info.value.length, info.value.max_length) == (0x7FFFFFFF, 1000)
    assert framer.buffered == 0


def test_length_prefix_framer_incomplete_header_and_payload() -> None:
    assert frames_of(LengthPrefixFramer(4), b"\x00\x00")[1] == (
        "IncompleteFrameError: the peer closed the stream 2 bytes into a frame"
    )
    assert frames_of(LengthPrefixFramer(4), b"\x00\x00\x00\x05abc")[1].startswith(
        "IncompleteFrameError: the peer closed the stream 7 bytes"
    )


def test_length_prefix_framer_refuses_bad_arguments() -> None:
    for prefix in (0, 3, 16, True, "big"):
        with pytest.raises(ValueError, match="prefix must be"):
            LengthPrefixFramer(prefix)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="byteorder"):
        LengthPrefixFramer(byteorder="network")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="<= 255"):
        LengthPrefixFramer(1, max_length=256)
    assert LengthPrefixFramer(1).max_length == 255
    assert LengthPrefixFramer(2).max_length == 65535
    assert LengthPrefixFramer(8).max_length == 1 << 20
    with pytest.raises(ValueError, match="over max_length=255"):
        LengthPrefixFramer(1).frame(b"x" * 256)


@given(st.integers(0, (1 << 64) - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded, (1 << 64) - 1) == (value, len(encoded))
    assert decode_varint(encoded[:-1], (1 << 64) - 1) is None


def test_varint_known_encodings_and_errors() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(300) == b"\xac\x02"
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError):
            encode_varint(bad)
    with pytest.raises(MalformedFrameError, match="non-minimal"):
        decode_varint(b"\x81\x00", 1000)
    with pytest.raises(FrameTooLongError):
        decode_varint(b"\xe9\x07", 1000)  # 1001
    with pytest.raises(FrameTooLongError):
        decode_varint(b"\x80\x80\x80", 1000)  # 3 bytes when 1000 needs 2: certainly over
    assert decode_varint(b"\xe8\x07", 1000) == (1000, 2)


def test_netstring_framer() -> None:
    framer = NetstringFramer(max_length=12)
    assert framer.frame(b"hello") == b"5:hello,"
    assert frames_of(framer, b"5:hello,0:,3:a,b,") == ([b"hello", b"", b"a,b"], "END")


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"05:hello,", "MalformedFrameError: netstring length with a leading zero"),
        (b":,", "MalformedFrameError: netstring without a length"),
        (b"+5:hello,", "MalformedFrameError: netstring length with a non-digit byte 0x2b"),
        (b"5:hello!", "MalformedFrameError: netstring not ended by a comma"),
        (b"13:", "FrameTooLongError: netstring of 13 bytes is longer than the limit of 12 bytes"),
        (b"99999999999", "FrameTooLongError: netstring of 99 bytes is longer than the limit"),
        (b"5:hel", "IncompleteFrameError: the peer closed the stream 5 bytes into a netstring"),
    ],
)
def test_netstring_framer_errors(wire: bytes, error: str) -> None:
    frames, end = frames_of(NetstringFramer(max_length=12), b"1:x," + wire)
    assert frames == [b"x"]
    assert end.startswith(error)


def test_framer_refuses_data_after_eof() -> None:
    framer = LineFramer()
    framer.receive_data(b"")
    assert framer.eof
    assert framer.next_frame() is END_OF_STREAM
    assert framer.next_frame() is END_OF_STREAM
    with pytest.raises(ValueError, match="after EOF"):
        framer.receive_data(b"x")


def test_framer_copies_mutable_input() -> None:
    framer = LineFramer()
    data = bytearray(b"abc\n")
    framer.receive_data(memoryview(data))
    data[:] = b"xyz\n"
    assert framer.next_frame() == b"abc"
    assert repr(NEED_DATA) == "NEED_DATA"


class FixedSize(Framer):
    """A framer of one's own: every frame is exactly ``size`` bytes."""

    frame_name = "record"

    def __init__(self, size: int) -> None:
        super().__init__()
        self.max_length = size

    def extract_frame(self, buffer: bytearray) -> bytes | None:
        if len(buffer) < self.max_length:
            return None
        frame = bytes(buffer[: self.max_length])
        del buffer[: self.max_length]
        return frame

    def frame(self, payload: bytes | bytearray | memoryview) -> bytes:
        if len(payload) != self.max_length:
            raise ValueError(f"a record is {self.max_length} bytes")
        return bytes(payload)


def test_framer_subclass_gets_eof_and_errors_from_the_base() -> None:
    assert frames_of(FixedSize(2), b"abcd") == ([b"ab", b"cd"], "END")
    assert frames_of(FixedSize(2), b"abc") == (
        [b"ab"],
        "IncompleteFrameError: the peer closed the stream 1 byte into a record",
    )
