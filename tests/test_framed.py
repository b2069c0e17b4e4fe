"""FrameChannel: a framer bound to a stream; frames, limits, EOF, timeouts, cancellation."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import triosrv
from triosrv import Connection, FrameChannel, ServerConfig, Timeouts
from triosrv.protocols import (
    Framer,
    FrameTooLongError,
    FramingError,
    IncompleteFrameError,
    LengthPrefixFramer,
    LineFramer,
    MalformedFrameError,
    NetstringFramer,
)
from triosrv.testing import open_test_server

from .helpers import receive_dripped_with_timeouts, send_in_pieces
from .test_framing import FRAMERS, Outcome, run, split, streams


def channel_pair(framer: Framer) -> tuple[trio.testing.MemorySendStream, FrameChannel]:
    """A peer's raw end, and a FrameChannel over the other end."""
    peer, ours = trio.testing.memory_stream_pair()
    return peer, FrameChannel(ours, framer)  # type: ignore[return-value]


async def test_frame_channel_receives_frames_split_across_chunks() -> None:
    peer, channel = channel_pair(LineFramer(max_length=100))
    for byte in b"one\ntwo\n\nthree\n":
        await peer.send_all(bytes([byte]))
    await peer.send_eof()  # type: ignore[attr-defined]
    assert [frame async for frame in channel] == [b"one", b"two", b"", b"three"]
    with pytest.raises(trio.EndOfChannel):
        await channel.receive()  # again: still the end, without reading the stream
    await channel.aclose()
    await peer.aclose()


async def test_frame_channel_sends_frames() -> None:
    peer, channel = channel_pair(LengthPrefixFramer(2))
    await channel.send(b"hi")
    await channel.send_many([b"a", b"", b"bc"])
    assert await peer.receive_some() == b"\x00\x02hi\x00\x01a\x00\x00\x00\x02bc"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="over max_length"):
        await channel.send(b"x" * 70000)
    with pytest.raises(ValueError, match="over max_length"):
        await channel.send_many([b"ok", b"x" * 70000])  # nothing of the batch is sent
    await channel.aclose()
    assert await peer.receive_some() == b""  # type: ignore[attr-defined]
    with pytest.raises(trio.ClosedResourceError):
        await channel.receive()
    with pytest.raises(trio.ClosedResourceError):
        await channel.send(b"x")


async def test_frame_channel_eof_mid_frame_raises_incomplete_frame() -> None:
    peer, channel = channel_pair(NetstringFramer())
    await peer.send_all(b"5:hello,5:hel")
    await peer.send_eof()  # type: ignore[attr-defined]
    assert await channel.receive() == b"hello"
    with pytest.raises(IncompleteFrameError, match="5 bytes into a netstring"):
        await channel.receive()
    with pytest.raises(IncompleteFrameError):  # sticky
        await channel.receive()
    await channel.aclose()


class EndlessStream(trio.abc.ReceiveStream):
    """A peer that sends *byte* forever, counting how much was taken from it."""

    def __init__(self, byte: bytes) -> None:
        self.byte = byte
        self.sent = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        size = 65536 if max_bytes is None else max_bytes
        self.sent += size
        return self.byte * size

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize(
    "framer",
    [
        LineFramer(max_length=1000),
        LineFramer(crlf="strict", max_length=1000),
        LineFramer(crlf="lenient", max_length=1000),
        LengthPrefixFramer(4, max_length=1000),
        LengthPrefixFramer("varint", max_length=1000),
        NetstringFramer(max_length=1000),
    ],
    ids=repr,
)
async def test_frame_channel_refuses_an_endless_frame_after_a_bounded_read(
    framer: Framer,
) -> None:
    stream = EndlessStream(b"\xff" if not isinstance(framer, NetstringFramer) else b"9")
    channel = FrameChannel(stream, framer, receive_size=512)  # type: ignore[arg-type]
    with pytest.raises((FrameTooLongError, MalformedFrameError)):
        await channel.receive()
    # Refused within max_length + header + one chunk: the rest was never read.
    assert stream.sent <= 1000 + 16 + 512
    assert framer.buffered == 0


async def test_frame_channel_cancelled_while_waiting_loses_no_bytes(
    autojump_clock: trio.abc.Clock,
) -> None:
    peer, channel = channel_pair(LineFramer())
    await peer.send_all(b"hel")
    with trio.move_on_after(10) as scope:
        await channel.receive()
    assert scope.cancelled_caught
    await peer.send_all(b"lo\nnext\n")
    assert await channel.receive() == b"hello"
    assert await channel.receive() == b"next"
    await channel.aclose()


async def test_frame_channel_cancelled_with_a_frame_buffered_keeps_the_frame() -> None:
    peer, channel = channel_pair(LineFramer())
    await peer.send_all(b"a\nb\n")
    assert await channel.receive() == b"a"  # b"b\n" is now buffered in the framer
    with trio.CancelScope() as scope:
        scope.cancel()
        await channel.receive()  # a checkpoint: cancelled before it takes anything
    assert scope.cancelled_caught
    assert await channel.receive() == b"b"
    await channel.aclose()


async def test_frame_channel_refuses_two_receivers() -> None:
    peer, channel = channel_pair(LineFramer())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(channel.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await channel.receive()
        await peer.send_all(b"x\n")
    await channel.aclose()
    with pytest.raises(ValueError, match="receive_size"):
        FrameChannel(peer, LineFramer(), receive_size=0)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=40), max_size=10),
    cuts=st.lists(st.integers(1, 50), max_size=12),
    receive_size=st.integers(1, 64),
)
def test_frame_channel_gives_the_framers_frames_for_any_chunking(
    payloads: list[bytes], cuts: list[int], receive_size: int
) -> None:
    async def main() -> list[bytes]:
        peer, ours = trio.testing.memory_stream_pair()
        sender = FrameChannel(peer, NetstringFramer(max_length=40))
        receiver = FrameChannel(ours, NetstringFramer(max_length=40), receive_size=receive_size)
        wire = b"".join(NetstringFramer(max_length=40).frame(p) for p in payloads)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_in_pieces, peer, wire, [(cut, 0) for cut in cuts])
            frames = [frame async for frame in receiver]
        await sender.aclose()
        await receiver.aclose()
        return frames

    assert trio.run(main) == payloads


# -- under a server: the connection's idle timeout, on virtual time ----------------


async def serve_memory(
    nursery: trio.Nursery, handler: triosrv._server.Handler, idle: float
) -> triosrv.Server:
    config = ServerConfig(binds=(), timeouts=Timeouts(idle=idle))
    return await nursery.start(triosrv.serve, handler, config)  # type: ignore[no-any-return]


async def test_frame_channel_runs_under_the_idle_timeout(autojump_clock: trio.abc.Clock) -> None:
    outcomes: list[tuple[object, float]] = []

    async def handler(conn: Connection) -> None:
        channel = FrameChannel(conn, LengthPrefixFramer(2))
        try:
            async for frame in channel:
                await channel.send(frame)
        except triosrv.IdleTimeout as exc:
            outcomes.append((exc, trio.current_time() - conn.started_at))
            raise

    async with trio.open_nursery() as nursery:
        server = await serve_memory(nursery, handler, idle=5.0)
        client, server_end = trio.testing.memory_stream_pair()
        await server.add_stream(server_end)
        # A frame dripped a byte every 4 s: each wait is under 5 s, so it arrives.
        for byte in b"\x00\x03abc":
            await client.send_all(bytes([byte]))
            await trio.sleep(4)  # not a real sleep: autojump_clock
        assert await client.receive_some() == b"\x00\x03abc"
        # Half a frame, then silence: the handler's receive times out 5 s later.
        await client.send_all(b"\x00\x03a")
        assert await client.receive_some() == b""  # the server closed us
        server.shutdown()
    await client.aclose()
    [(exc, elapsed)] = outcomes
    assert isinstance(exc, triosrv.IdleTimeout)
    assert elapsed == pytest.approx(5 * 4 + 5, abs=0.01)  # 5 bytes dripped, then idle
    assert server.statistics().timeouts["idle"] == 1


async def test_frame_channel_line_handler_over_tcp() -> None:
    async def handler(conn: Connection) -> None:
        lines = FrameChannel(conn, LineFramer(crlf="lenient", max_length=16))
        try:
            async for line in lines:
                await lines.send(line.upper())
        except FrameTooLongError:
            await conn.send_all(b"-ERR line too long\r\n")

    async with open_test_server(handler) as running, await running.connect() as stream:
        await stream.send_all(b"hello\r\nworld\n" + b"x" * 100)
        received = b""
        while chunk := await stream.receive_some():
            received += chunk
    assert received == b"HELLO\r\nWORLD\r\n-ERR line too long\r\n"


@settings(max_examples=80, deadline=None)
@given(name=st.sampled_from(sorted(FRAMERS)), data=st.data())
def test_frame_channel_ends_as_the_framer_does_for_any_stream(
    name: str, data: st.DataObject
) -> None:
    # Noise included: the channel raises the same error after the same frames as the
    # sans-IO framer fed everything at once, whatever the chunking and receive size.
    factory = FRAMERS[name]
    stream = data.draw(streams(factory))
    cuts = data.draw(st.lists(st.integers(1, 50), max_size=8))
    receive_size = data.draw(st.integers(1, 64))

    async def main() -> Outcome:
        peer, ours = trio.testing.memory_stream_pair()
        channel = FrameChannel(ours, factory(), receive_size=receive_size)
        frames: list[bytes] = []

        async def send() -> None:
            for chunk in split(stream, cuts):
                await peer.send_all(chunk)
            await peer.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            try:
                async for frame in channel:
                    frames.append(frame)
                end = "END"
            except FramingError as exc:
                end = f"{type(exc).__name__}: {exc}"
            nursery.cancel_scope.cancel()  # the peer may still be sending
        await peer.aclose()
        await channel.aclose()
        return frames, end

    assert trio.run(main) == run(factory(), [stream])


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=30), max_size=8),
    chunk_delays=st.lists(st.tuples(st.integers(1, 20), st.integers(0, 5)), max_size=10),
    timeouts=st.lists(st.integers(1, 6), min_size=1, max_size=20),  # 0 would never wait
)
def test_frame_channel_timeouts_at_any_moment_lose_no_frame(
    payloads: list[bytes], chunk_delays: list[tuple[int, int]], timeouts: list[int]
) -> None:
    # The peer sends the frames in pieces with pauses; the receiver gives each receive()
    # a deadline, retrying after each timeout. Whatever lands where, every frame arrives
    # once, in order. Virtual time: the deadlines fire between and inside frames.
    framer = LengthPrefixFramer("varint", max_length=30)
    wire = b"".join(framer.frame(p) for p in payloads)

    async def receive_frame(channel: FrameChannel) -> bytes | None:
        try:
            return await channel.receive()
        except trio.EndOfChannel:
            return None

    def wrap(ours: trio.abc.Stream) -> FrameChannel:
        return FrameChannel(ours, LengthPrefixFramer("varint", max_length=30))

    got = receive_dripped_with_timeouts(wire, chunk_delays, timeouts, wrap, receive_frame)
    assert got == payloads
