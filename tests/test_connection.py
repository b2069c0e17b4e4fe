"""Connection: the stream contract, counters, and the three timeouts on virtual time."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import triosrv
from triosrv import Connection, ServerConfig, SocketConnection, StreamConnection, Timeouts
from triosrv._listeners import configure_accepted
from triosrv.testing import open_test_server

from .helpers import StrictEcho

# -- the stream contract ---------------------------------------------------------


async def memory_connection_pair() -> tuple[Connection, Connection]:
    left, right = trio.testing.memory_stream_pair()
    return StreamConnection(left, peer="a"), StreamConnection(right, peer="b")


async def lockstep_connection_pair() -> tuple[Connection, Connection]:
    left, right = trio.testing.lockstep_stream_pair()
    return StreamConnection(left), StreamConnection(right)


async def test_connection_passes_trio_half_closeable_stream_checks() -> None:
    await trio.testing.check_half_closeable_stream(memory_connection_pair, lockstep_connection_pair)


def _socket_connection_pair() -> tuple[SocketConnection, SocketConnection]:
    """A connected TCP pair on loopback, set up as the server sets up its sockets."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    for sock in (a, b):
        configure_accepted(sock)
    return SocketConnection(a), SocketConnection(b)


async def socket_connection_pair() -> tuple[SocketConnection, SocketConnection]:
    return _socket_connection_pair()


async def clogged_socket_connection_pair() -> tuple[SocketConnection, SocketConnection]:
    left, right = _socket_connection_pair()
    for sock in (left.sock, right.sock):  # fill both directions: the next send blocks
        for size in (65536, 4096, 1):
            while True:
                try:
                    sock.send(b"x" * size)
                except BlockingIOError:
                    break
    return left, right


async def test_socket_connection_passes_trio_half_closeable_stream_checks() -> None:
    await trio.testing.check_half_closeable_stream(
        socket_connection_pair, clogged_socket_connection_pair
    )


def test_connection_is_an_abstract_base_of_two_siblings() -> None:
    assert issubclass(StreamConnection, Connection) and issubclass(SocketConnection, Connection)
    assert not issubclass(SocketConnection, StreamConnection)
    assert not issubclass(StreamConnection, SocketConnection)

    class Incomplete(Connection):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


async def test_connection_of_a_stream_still_builds_a_stream_connection() -> None:
    left, _ = trio.testing.memory_stream_pair()
    conn = Connection(left, peer="p", id=3)  # type: ignore[abstract]
    assert type(conn) is StreamConnection
    assert (conn.stream, conn.peer, conn.id) == (left, "p", 3)


async def test_every_connection_shares_the_records_deadline_fields() -> None:
    # One set of deadline fields for the handler's connections and every backend's
    # records: the keeper and the snapshots read them the same way.
    left, right = _socket_connection_pair()
    stream_conn = StreamConnection(trio.testing.memory_stream_pair()[0])
    try:
        for conn in (left, stream_conn):
            assert isinstance(conn, triosrv.lowlevel.ConnectionRecord)
            assert conn.waiting == triosrv.lowlevel.NOT_WAITING
            due, kind = conn.next_timeout(Timeouts(lifetime=5))
            assert (kind, due) == ("lifetime", conn.started_at + 5)
    finally:
        for sock_conn in (left, right):
            sock_conn.close_now()


async def test_handler_gets_a_connection_over_tcp_and_add_stream() -> None:
    seen: list[type[object]] = []

    async def record(conn: Connection) -> None:
        assert isinstance(conn, triosrv.Connection)
        seen.append(type(conn))
        await conn.send_all(b"ok")

    async with open_test_server(record) as running:
        async with await running.connect() as stream:
            assert await stream.receive_some() == b"ok"
        client, served = trio.testing.memory_stream_pair()
        assert await running.server.add_stream(served) is not None
        assert await client.receive_some() == b"ok"
        await client.aclose()
    assert seen == [SocketConnection, StreamConnection]


async def test_connection_counts_bytes_and_iterates_chunks() -> None:
    a, b = await memory_connection_pair()
    await a.send_all(b"hello")
    await a.send_eof()
    chunks = [chunk async for chunk in b]
    assert b"".join(chunks) == b"hello"
    assert (a.bytes_sent, b.bytes_received) == (5, 5)
    await a.aclose()
    await b.aclose()


# -- timeouts, on the mock clock, through a server over memory streams ------------


def handler_recording(outcomes: list[object]) -> triosrv._server.Handler:
    async def handler(conn: Connection) -> None:
        try:
            async for chunk in conn:
                await conn.send_all(chunk)
        except triosrv.ConnectionTimeout as exc:
            outcomes.append((type(exc), trio.current_time() - conn.started_at))
            raise

    return handler


async def open_memory_server(
    nursery: trio.Nursery, handler: triosrv._server.Handler, **timeouts: float | None
) -> triosrv.Server:
    config = ServerConfig(binds=(), timeouts=Timeouts(**timeouts))  # type: ignore[arg-type]
    return await nursery.start(triosrv.serve, handler, config)  # type: ignore[no-any-return]


async def connect(server: triosrv.Server) -> trio.abc.HalfCloseableStream:
    client, server_end = trio.testing.memory_stream_pair()
    await server.add_stream(server_end, peer="client")
    return client


async def test_connection_receives_bytes_from_a_bytearray_stream() -> None:
    # trio's memory streams hand out bytearrays; a protocol's answer() is promised bytes.
    async with trio.open_nursery() as nursery:
        server = await open_memory_server(nursery, triosrv.protocol_handler(StrictEcho))
        client = await connect(server)
        for chunk in (b"one", b"two"):
            await client.send_all(chunk)
            assert await client.receive_some() == chunk
        await client.aclose()
        server.shutdown()
    assert server.statistics().handler_errors == 0


async def test_idle_timeout_fires_after_idle_seconds(autojump_clock: trio.abc.Clock) -> None:
    outcomes: list[object] = []
    async with trio.open_nursery() as nursery:
        server = await open_memory_server(nursery, handler_recording(outcomes), idle=5.0)
        client = await connect(server)
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"
        start = trio.current_time()
        assert await client.receive_some() == b""  # the server closed us
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.01)
        assert outcomes and outcomes[0][0] is triosrv.IdleTimeout  # type: ignore[index]
        assert server.statistics().timeouts["idle"] == 1
        server.shutdown()
    await client.aclose()


async def test_idle_timeout_is_restarted_by_traffic(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        server = await open_memory_server(nursery, handler_recording([]), idle=5.0)
        client = await connect(server)
        for _ in range(10):  # 10 x 4 s of activity: 40 s, never 5 s idle
            await trio.sleep(4)  # not a real sleep: autojump_clock
            await client.send_all(b"x")
            assert await client.receive_some() == b"x"
        assert server.statistics().timeouts["idle"] == 0
        start = trio.current_time()
        assert await client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.01)
        server.shutdown()
    await client.aclose()


async def test_write_timeout_fires_when_peer_stops_reading(
    autojump_clock: trio.abc.Clock,
) -> None:
    outcomes: list[object] = []

    async def flood(conn: Connection) -> None:
        try:
            while True:
                await conn.send_all(b"x" * 1000)
        except triosrv.WriteTimeout as exc:
            outcomes.append((exc, trio.current_time()))
            raise

    async with trio.open_nursery() as nursery:
        server = await open_memory_server(nursery, flood, idle=None, write=3.0)
        client, server_end = trio.testing.lockstep_stream_pair()
        await server.add_stream(server_end)
        await client.receive_some(10)
        start = trio.current_time()
        await trio.sleep(100)  # not a real sleep: autojump_clock
        assert len(outcomes) == 1
        assert server.statistics().timeouts == {
            "idle": 0,
            "write": 1,
            "lifetime": 0,
            "handshake": 0,
            "slow_receive": 0,
        }
        assert server.statistics().active == 0
        exc, fired_at = outcomes[0]  # type: ignore[misc]  # a (exception, time) pair
        assert str(exc) == "write timeout after 3 s"
        assert fired_at - start == pytest.approx(3.0, abs=0.01)
        server.shutdown()
    await client.aclose()


async def test_lifetime_timeout_cancels_a_busy_connection(
    autojump_clock: trio.abc.Clock,
) -> None:
    ended: list[float] = []

    async def busy(conn: Connection) -> None:
        try:
            await trio.sleep_forever()  # not in a receive or send: plain cancellation
        finally:
            ended.append(trio.current_time() - conn.started_at)

    async with trio.open_nursery() as nursery:
        server = await open_memory_server(nursery, busy, lifetime=7.0)
        client = await connect(server)
        assert await client.receive_some() == b""
        assert ended == [pytest.approx(7.0, abs=0.01)]
        assert server.statistics().timeouts["lifetime"] == 1
        server.shutdown()
    await client.aclose()


async def test_lifetime_timeout_raises_in_a_pending_receive(
    autojump_clock: trio.abc.Clock,
) -> None:
    outcomes: list[object] = []
    async with trio.open_nursery() as nursery:
        server = await open_memory_server(nursery, handler_recording(outcomes), lifetime=7.0)
        client = await connect(server)
        for _ in range(6):  # traffic keeps idle away; lifetime still ends it at 7 s
            await client.send_all(b"x")
            await client.receive_some()
            await trio.sleep(1)  # not a real sleep: autojump_clock
        assert await client.receive_some() == b""
        assert outcomes == [(triosrv.LifetimeTimeout, pytest.approx(7.0, abs=0.01))]
        server.shutdown()
    await client.aclose()


async def test_no_timeouts_means_waiting_forever(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        server = await open_memory_server(nursery, handler_recording([]), idle=None, write=None)
        client = await connect(server)
        await trio.sleep(10_000)  # not a real sleep: autojump_clock
        assert server.statistics().active == 1
        server.shutdown(grace=0)
    await client.aclose()


async def test_timeout_kinds_are_connection_timeouts() -> None:
    for cls, kind in [
        (triosrv.IdleTimeout, "idle"),
        (triosrv.WriteTimeout, "write"),
        (triosrv.LifetimeTimeout, "lifetime"),
        (triosrv.HandshakeTimeout, "handshake"),
    ]:
        assert issubclass(cls, triosrv.ConnectionTimeout)
        assert cls.kind == kind


async def _noop() -> AsyncIterator[None]:  # pragma: no cover - keeps mypy's import used
    yield


async def test_timeout_in_a_handlers_own_nursery_is_isolated(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A reader task inside the handler's nursery times out: the group that comes out
    (the timeout plus its siblings' Cancelled) ends that connection, not the server."""

    async def handler(conn: Connection) -> None:
        async def reader() -> None:
            async for chunk in conn:
                await conn.send_all(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = await open_memory_server(nursery, handler, idle=5.0)
        silent = await connect(server)
        assert await silent.receive_some() == b""  # closed at the idle timeout
        stats = server.statistics()
        assert stats.timeouts["idle"] == 1
        assert stats.handler_errors == 0
        assert stats.state == "serving"
        chatty = await connect(server)  # and the server still serves
        await chatty.send_all(b"still here")
        assert await chatty.receive_some() == b"still here"
        server.shutdown(grace=0)
    await silent.aclose()
    await chatty.aclose()


async def test_timeout_fired_before_the_connection_task_runs_still_ends_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        server = await open_memory_server(nursery, handler_recording([]), lifetime=5.0)
        client, server_end = trio.testing.memory_stream_pair()
        conn = await server.add_stream(server_end)
        assert conn is not None
        conn.expire("lifetime", server.config.timeouts)  # its task has not run yet
        with trio.fail_after(1):
            assert await client.receive_some() == b""
        server.shutdown()
    await client.aclose()


async def test_add_stream_waiting_for_a_slot_is_refused_after_shutdown(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = ServerConfig(binds=(), limits=triosrv.Limits(max_connections=1))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(triosrv.serve, handler_recording([]), config)
        first = await connect(server)
        outcome: list[object] = []
        late_client, late_end = trio.testing.memory_stream_pair()

        async def late() -> None:
            try:
                await server.add_stream(late_end)
            except trio.ClosedResourceError as exc:
                outcome.append(exc)

        nursery.start_soon(late)
        await trio.testing.wait_all_tasks_blocked()
        server.shutdown(grace=1)
        await first.aclose()  # frees the slot the late stream waits for
        await server.wait_closed()
        await trio.testing.wait_all_tasks_blocked()
        assert len(outcome) == 1
        assert server.statistics().active == 0
        assert await late_client.receive_some() == b""  # the server closed it
    await late_client.aclose()


async def test_shutdown_grace_lets_a_connection_run_then_cancels_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    cancelled: list[tuple[float, bool]] = []

    async def stuck(conn: Connection) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append((trio.current_time(), conn.draining))
            raise

    async with trio.open_nursery() as nursery:
        server = await open_memory_server(nursery, stuck)
        client = await connect(server)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        server.shutdown(grace=7.0)
        server.shutdown(grace=100)  # idempotent: a longer grace does not extend it
        await server.wait_closed()
    [(at, draining)] = cancelled
    assert at - start == pytest.approx(7.0, abs=0.01)
    assert draining
    assert await client.receive_some() == b""
    await client.aclose()
