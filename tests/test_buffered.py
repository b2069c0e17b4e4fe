"""BufferedStream: receive_until, receive_exactly, lines; limits, EOF, timeouts, cancellation."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import triosrv
from triosrv import BufferedStream, Connection, FrameChannel, ServerConfig, Timeouts
from triosrv.protocols import FrameTooLongError, IncompleteFrameError, LengthPrefixFramer

from .helpers import receive_dripped_with_timeouts, send_in_pieces
from .test_framed import EndlessStream


async def buffered_pair() -> tuple[BufferedStream, BufferedStream]:
    left, right = trio.testing.memory_stream_pair()
    return BufferedStream(left), BufferedStream(right)


async def lockstep_buffered_pair() -> tuple[BufferedStream, BufferedStream]:
    left, right = trio.testing.lockstep_stream_pair()
    return BufferedStream(left), BufferedStream(right)


async def test_buffered_stream_passes_trio_half_closeable_stream_checks() -> None:
    await trio.testing.check_half_closeable_stream(buffered_pair, lockstep_buffered_pair)


def pair() -> tuple[trio.testing.MemorySendStream, BufferedStream]:
    peer, ours = trio.testing.memory_stream_pair()
    return peer, BufferedStream(ours)  # type: ignore[return-value]


async def test_buffered_stream_keeps_what_it_read_past_the_delimiter() -> None:
    peer, stream = pair()
    await peer.send_all(b"GET / HTTP/1.0\r\n\r\nbody bytes")
    assert await stream.receive_until(b"\r\n\r\n", max_bytes=100) == b"GET / HTTP/1.0"
    assert stream.buffer == b"body bytes"
    assert await stream.receive_exactly(4) == b"body"
    assert await stream.receive_some(3) == b" by"
    assert await stream.receive_some() == b"tes"
    await peer.send_eof()  # type: ignore[attr-defined]
    assert await stream.receive_some() == b""
    assert await stream.receive_some() == b""
    await stream.aclose()


async def test_buffered_stream_receive_until_limit_is_the_payload() -> None:
    peer, stream = pair()
    await peer.send_all(b"abcd\nabcde\n")
    assert await stream.receive_until(b"\n", max_bytes=4) == b"abcd"
    with pytest.raises(FrameTooLongError, match="limit of 4 bytes"):
        await stream.receive_until(b"\n", max_bytes=4)
    assert stream.buffer == b"abcde\n"  # nothing consumed: the caller decides
    await stream.aclose()


async def test_buffered_stream_receive_until_reads_a_bounded_amount() -> None:
    endless = EndlessStream(b"x")
    stream = BufferedStream(endless, receive_size=100)  # type: ignore[arg-type]
    with pytest.raises(FrameTooLongError):
        await stream.receive_until(b"\r\n", max_bytes=1000)
    assert endless.sent <= 1000 + 2 + 100
    await stream.aclose()


async def test_buffered_stream_eof_before_the_delimiter() -> None:
    peer, stream = pair()
    await peer.send_all(b"par")
    await peer.send_eof()  # type: ignore[attr-defined]
    with pytest.raises(IncompleteFrameError) as info:
        await stream.receive_until(b"\n", max_bytes=10)
    assert info.value.received == 3
    assert stream.buffer == b"par"
    assert await stream.receive_exactly(3) == b"par"
    with pytest.raises(IncompleteFrameError) as info:
        await stream.receive_until(b"\n", max_bytes=10)
    assert info.value.received == 0  # a clean end between messages
    await stream.aclose()


async def test_buffered_stream_receive_exactly() -> None:
    peer, stream = pair()
    assert await stream.receive_exactly(0) == b""
    await peer.send_all(b"0123456789")
    assert await stream.receive_exactly(3) == b"012"
    assert await stream.receive_exactly(7) == b"3456789"
    await peer.send_all(b"ab")
    await peer.send_eof()  # type: ignore[attr-defined]
    with pytest.raises(IncompleteFrameError, match="2 bytes into a 5-byte read"):
        await stream.receive_exactly(5)
    with pytest.raises(ValueError):
        await stream.receive_exactly(-1)
    await stream.aclose()


async def test_buffered_stream_lines() -> None:
    peer, stream = pair()
    await peer.send_all(b"one\ntwo\n\nthree\nrest")
    await peer.send_eof()  # type: ignore[attr-defined]
    got = []
    async for line in stream.lines(max_length=5):
        got.append(line)
        if line == b"two":
            break  # leaves the rest buffered
    assert stream.buffer == b"\nthree\nrest"
    lines = stream.lines(max_length=5)
    assert [await lines.__anext__(), await lines.__anext__()] == [b"", b"three"]
    with pytest.raises(IncompleteFrameError, match="4 bytes into a delimited read"):
        await lines.__anext__()
    await stream.aclose()


async def test_buffered_stream_lines_end_at_eof_and_refuse_long_lines() -> None:
    peer, stream = pair()
    await peer.send_all(b"a\r\nb\r\n")
    await peer.send_eof()  # type: ignore[attr-defined]
    assert [line async for line in stream.lines(delimiter=b"\r\n")] == [b"a", b"b"]
    peer, stream = pair()
    await peer.send_all(b"ok\n" + b"x" * 20)
    with pytest.raises(FrameTooLongError):
        async for _ in stream.lines(max_length=10):
            pass
    with pytest.raises(ValueError):
        stream.lines(delimiter=b"")
    await stream.aclose()


async def test_buffered_stream_cancelled_receive_loses_no_bytes(
    autojump_clock: trio.abc.Clock,
) -> None:
    peer, stream = pair()
    await peer.send_all(b"par")
    with trio.move_on_after(10) as scope:
        await stream.receive_until(b"\n", max_bytes=100)
    assert scope.cancelled_caught
    with trio.move_on_after(10) as scope:
        await stream.receive_exactly(10)
    assert scope.cancelled_caught
    await peer.send_all(b"tial\n")
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.receive_until(b"\n", max_bytes=100)  # cancelled before it takes
    assert scope.cancelled_caught
    assert await stream.receive_until(b"\n", max_bytes=100) == b"partial"
    await stream.aclose()


async def test_buffered_stream_frame_channel_starts_from_its_buffer() -> None:
    # A text header, then length-prefixed frames: switching loses no read-ahead byte.
    peer, stream = pair()
    await peer.send_all(b"HELLO v1\n\x00\x02hi\x00\x03you")
    assert await stream.receive_until(b"\n", max_bytes=64) == b"HELLO v1"
    channel = FrameChannel(stream, LengthPrefixFramer(2))
    assert [await channel.receive(), await channel.receive()] == [b"hi", b"you"]
    await channel.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_exactly(1)


async def test_buffered_stream_refuses_two_receivers() -> None:
    peer, stream = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.receive_exactly, 1)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await stream.receive_until(b"\n", max_bytes=10)
        await peer.send_all(b"x")
    await stream.aclose()
    with pytest.raises(ValueError, match="receive_size"):
        BufferedStream(peer, receive_size=0)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=10),
    cuts=st.lists(st.integers(1, 40), max_size=12),
    receive_size=st.integers(1, 64),
)
def test_buffered_stream_lines_for_any_chunking(
    lines: list[bytes], cuts: list[int], receive_size: int
) -> None:
    wire = b"".join(line + b"\n" for line in lines)

    async def main() -> list[bytes]:
        peer, ours = trio.testing.memory_stream_pair()
        stream = BufferedStream(ours, receive_size=receive_size)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_in_pieces, peer, wire, [(cut, 0) for cut in cuts])
            got = [line async for line in stream.lines(max_length=30)]
        await peer.aclose()
        await stream.aclose()
        return got

    assert trio.run(main) == lines


async def test_buffered_stream_runs_under_the_idle_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    outcomes: list[float] = []

    async def handler(conn: Connection) -> None:
        stream = BufferedStream(conn)
        try:
            async for line in stream.lines(max_length=100):
                await stream.send_all(line + b"\n")
        except triosrv.IdleTimeout:
            outcomes.append(trio.current_time() - conn.started_at)
            raise

    config = ServerConfig(binds=(), timeouts=Timeouts(idle=3.0))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(triosrv.serve, handler, config)
        client, server_end = trio.testing.memory_stream_pair()
        await server.add_stream(server_end)
        await client.send_all(b"ping\npa")
        assert await client.receive_some() == b"ping\n"
        assert await client.receive_some() == b""  # "pa" and then silence: closed
        server.shutdown()
    await client.aclose()
    assert outcomes == [pytest.approx(3.0, abs=0.01)]
    assert server.statistics().timeouts["idle"] == 1


def receive_until_model(data: bytes, delimiter: bytes, max_bytes: int) -> list[object]:
    """What successive receive_until calls return, from the whole stream at once."""
    out: list[object] = []
    while True:
        index = data.find(delimiter)
        if 0 <= index <= max_bytes:
            out.append(data[:index])
            data = data[index + len(delimiter) :]
        elif len(data) >= max_bytes + len(delimiter):
            return [*out, "FrameTooLongError"]
        else:
            return [*out, ("IncompleteFrameError", len(data))]


@settings(max_examples=80, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"a", b"b", b"\r", b"\n", b"\r\n", b"ab"]), max_size=40).map(
        b"".join
    ),
    delimiter=st.sampled_from([b"\n", b"\r\n", b"aab", b"b"]),
    max_bytes=st.integers(0, 8),
    cuts=st.lists(st.integers(1, 20), max_size=10),
    receive_size=st.integers(1, 16),
)
def test_buffered_stream_receive_until_matches_its_model(
    data: bytes, delimiter: bytes, max_bytes: int, cuts: list[int], receive_size: int
) -> None:
    async def main() -> list[object]:
        peer, ours = trio.testing.memory_stream_pair()
        stream = BufferedStream(ours, receive_size=receive_size)
        await send_in_pieces(peer, data, [(cut, 0) for cut in cuts])
        out: list[object] = []
        while True:
            try:
                out.append(await stream.receive_until(delimiter, max_bytes=max_bytes))
            except FrameTooLongError:
                out.append("FrameTooLongError")
                break
            except IncompleteFrameError as exc:
                out.append(("IncompleteFrameError", exc.received))
                break
        await peer.aclose()
        await stream.aclose()
        return out

    assert trio.run(main) == receive_until_model(data, delimiter, max_bytes)


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=8),
    chunk_delays=st.lists(st.tuples(st.integers(1, 20), st.integers(0, 5)), max_size=10),
    timeouts=st.lists(st.integers(1, 6), min_size=1, max_size=20),  # 0 would never wait
)
def test_buffered_stream_timeouts_at_any_moment_lose_no_line(
    lines: list[bytes], chunk_delays: list[tuple[int, int]], timeouts: list[int]
) -> None:
    # As the FrameChannel test: each receive_until under a deadline, retried after each
    # timeout, on virtual time; every line arrives once, in order.
    wire = b"".join(line + b"\n" for line in lines)

    async def receive_line(stream: BufferedStream) -> bytes | None:
        try:
            return await stream.receive_until(b"\n", max_bytes=20)
        except IncompleteFrameError as exc:
            assert exc.received == 0
            return None

    def wrap(ours: trio.abc.Stream) -> BufferedStream:
        return BufferedStream(ours, receive_size=7)

    got = receive_dripped_with_timeouts(wire, chunk_delays, timeouts, wrap, receive_line)
    assert got == lines
