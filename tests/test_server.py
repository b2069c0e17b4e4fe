"""The server over real loopback sockets: echo, isolation, limits, drain, cancellation.

Time here is real (the mock clock fires false timeouts while the kernel delivers
bytes), so timing assertions are short real timeouts with generous tolerance.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import socket
import stat
import struct

import pytest
import trio

import triosrv
from triosrv import Connection, Limits, Timeouts
from triosrv.testing import open_fds, wait_for

from .helpers import (
    check_one_failure_is_isolated,
    connect,
    echo_all_at_once,
    random_payload,
    receive_until_eof,
    running_server,
    tcp_port,
    triosrv_tasks,
)

# The latest a 0.3 s timeout (or grace) may fire in the real-time smoke tests below: late
# only by a loaded machine's scheduling, never early.
SMOKE_LATEST = 3.0


async def test_serve_reports_the_real_port_and_leaves_nothing_behind() -> None:
    fds_before = open_fds()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            triosrv.serve, triosrv.load_handler("echo"), triosrv.ServerConfig(binds="127.0.0.1:0")
        )
        assert len(server.addresses) == 1
        assert server.addresses[0].startswith("tcp://127.0.0.1:")
        assert tcp_port(server) != 0
        assert server.statistics().state == "serving"
        assert any(name.startswith("triosrv listener") for name in triosrv_tasks())
        async with await connect(server) as stream:
            await stream.send_all(b"hi")
            assert await stream.receive_some() == b"hi"
        nursery.cancel_scope.cancel()
    assert server.state == "closed"
    assert triosrv_tasks() == []
    assert open_fds() == fds_before


@pytest.mark.parametrize("half_close", [False, True], ids=["full", "half-close"])
async def test_echo_200_concurrent_clients_get_exactly_their_bytes(half_close: bool) -> None:
    rng = random.Random(200 + half_close)
    payloads = [random_payload(rng, 1024 * 1024) for _ in range(200)]
    async with running_server("echo") as server:
        stats = await echo_all_at_once(server, payloads, half_close=half_close)
    assert stats.accepted == 200
    assert stats.peak_active >= 2


async def test_handler_error_is_isolated_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(conn: Connection) -> None:
        async for chunk in conn:
            if chunk.startswith(b"boom"):
                raise RuntimeError("planted failure")
            await conn.send_all(chunk)

    async with running_server(handler) as server:
        await check_one_failure_is_isolated(server, caplog, others=20)


async def test_handler_errors_raise_gives_trio_crash_semantics() -> None:
    async def handler(conn: Connection) -> None:
        raise ValueError("crash the server")

    with pytest.raises(ValueError, match="crash the server"):
        async with running_server(handler, handler_errors="raise") as server:
            async with await connect(server) as stream:
                await stream.receive_some()
            await trio.sleep_forever()


async def test_peer_reset_is_not_a_handler_error(backend: str) -> None:
    async with running_server("chargen", backend=backend) as server:
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", tcp_port(server)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await sock.recv(100)
        sock.close()  # with SO_LINGER 0: a reset, not a FIN
        await wait_for(lambda: not server.statistics().active)
        stats = server.statistics()
    assert stats.handler_errors == 0
    assert stats.broken == 1


async def test_max_connections_wait_serves_newcomer_after_one_leaves(backend: str) -> None:
    limits = Limits(max_connections=2)
    async with running_server("echo", limits=limits, backend=backend) as server:
        first, second = await connect(server), await connect(server)
        for stream in (first, second):
            await stream.send_all(b"x")
            assert await stream.receive_some() == b"x"
        third = await connect(server)  # the kernel completes it; we don't accept it
        await third.send_all(b"waiting")
        with trio.move_on_after(0.3):  # real time: the kernel delivers bytes
            await third.receive_some()
            pytest.fail("the third connection was served while two were active")
        assert server.statistics().accepted == 2
        await first.aclose()
        with trio.fail_after(2):
            assert await third.receive_some() == b"waiting"
        assert server.statistics().rejected == 0
        await second.aclose()
        await third.aclose()


async def test_max_connections_reject_closes_newcomer_and_counts(backend: str) -> None:
    limits = Limits(max_connections=2, overload="reject")
    async with running_server("echo", limits=limits, backend=backend) as server:
        kept = [await connect(server), await connect(server)]
        for stream in kept:
            await stream.send_all(b"x")
            assert await stream.receive_some() == b"x"
        async with await connect(server) as third:
            with trio.fail_after(2):
                try:
                    assert await third.receive_some() == b""
                except trio.BrokenResourceError:
                    pass  # closed with a reset: also "closed at once"
        assert server.statistics().rejected == 1
        for stream in kept:
            await stream.aclose()


async def test_shutdown_refuses_new_connections_and_drains() -> None:
    async def slow_echo(conn: Connection) -> None:
        async for chunk in conn:
            await trio.sleep(0.2)  # real sleep: the handler is mid-work when drain starts
            await conn.send_all(chunk)

    async with trio.open_nursery() as nursery:
        config = triosrv.ServerConfig(binds="127.0.0.1:0", timeouts=Timeouts(grace=5))
        server = await nursery.start(triosrv.serve, slow_echo, config)
        port = tcp_port(server)
        stream = await connect(server)
        await stream.send_all(b"in flight")
        await trio.sleep(0.05)  # real sleep: let the handler take the bytes
        server.shutdown()
        assert server.statistics().state == "draining"
        await trio.sleep(0.05)  # real sleep: well under the 100 ms target
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        assert await stream.receive_some() == b"in flight"  # finished within grace
        await stream.send_eof()
        assert await stream.receive_some() == b""
        await stream.aclose()
        with trio.fail_after(1):
            await server.wait_closed()
    assert server.statistics().state == "closed"


async def test_shutdown_cancels_what_is_left_after_grace() -> None:
    # The one real-socket smoke test of grace's timing (trio backend): virtual time is
    # in test_connection.py; every backend's grace is checked by behaviour in
    # test_backends.py. Real time because the point is the real clock over a real socket.
    cancelled: list[bool] = []

    async def stuck(conn: Connection) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(conn.draining)
            raise

    async with running_server(stuck) as server:
        stream = await connect(server)
        await wait_for(lambda: server.statistics().active)
        start = trio.current_time()
        server.shutdown(grace=0.3)
        server.shutdown(grace=10)  # idempotent: a longer grace does not extend it
        await server.wait_closed()
        elapsed = trio.current_time() - start
        assert await stream.receive_some() == b""
        await stream.aclose()
    assert cancelled == [True]
    assert 0.25 < elapsed < SMOKE_LATEST


async def test_cancelling_the_enclosing_scope_stops_everything_at_once(backend: str) -> None:
    fds_before = open_fds()
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                triosrv.serve,
                triosrv.load_handler("chargen"),
                triosrv.ServerConfig(binds="127.0.0.1:0", backend=backend),
            )
            streams = [await connect(server) for _ in range(20)]
            for stream in streams:
                await stream.receive_some(10)
            nursery.cancel_scope.cancel()
    # Prompt: the move_on_after above only guards against a hang (it would leave the
    # loop before nursery.cancel_scope fires, and the checks below would fail).
    for stream in streams:
        await stream.aclose()
    assert server.state == "closed"
    assert triosrv_tasks() == []
    assert open_fds() == fds_before


async def test_write_timeout_closes_a_peer_that_never_reads_and_memory_stays_flat(
    backend: str,
) -> None:
    timeouts = Timeouts(write=0.3)
    async with running_server("chargen", timeouts=timeouts, backend=backend) as server:
        sock = socket.create_connection(("127.0.0.1", tcp_port(server)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # The timeout is counted, then the connection closed: wait for both.
        stats = await wait_for(
            lambda: (s := server.statistics()).timeouts["write"] and not s.active and s,
            timeout=10,
        )
        sock.close()
    # The server never buffered beyond what the kernel holds for a peer that reads
    # nothing (a few hundred KiB at most): it did not queue chargen's endless output.
    assert stats.bytes_sent < 4 * 1024 * 1024
    assert stats.active == 0


async def test_idle_timeout_over_a_real_socket_closes_an_idle_peer(backend: str) -> None:
    async with running_server("echo", timeouts=Timeouts(idle=0.3), backend=backend) as server:
        async with await connect(server) as stream:
            await stream.send_all(b"alive")  # served before its deadline
            assert await stream.receive_some() == b"alive"
            with trio.fail_after(10):
                assert await stream.receive_some() == b""
        assert server.statistics().timeouts["idle"] == 1


async def test_lifetime_timeout_over_a_real_socket(backend: str) -> None:
    timeouts = Timeouts(lifetime=0.3)
    async with running_server("chargen", timeouts=timeouts, backend=backend) as server:
        async with await connect(server) as stream:
            assert await stream.receive_some()  # served before its deadline
            with trio.fail_after(10):
                while await stream.receive_some():
                    pass
        assert server.statistics().timeouts["lifetime"] == 1


# -- one real-socket smoke test per timeout kind --------------------------------------
# The timing of each timeout is tested in virtual time over memory streams
# (test_connection.py: the mock clock fires false timeouts over real sockets). These three
# check once, on the default backend, that the real clock agrees over a real socket: a
# timeout of 0.3 s fires after 0.25..SMOKE_LATEST s, generous for a loaded machine (the
# lower bound is what matters: never before its setting). Grace's is
# test_shutdown_cancels_what_is_left_after_grace above.


async def test_write_timeout_smoke_fires_near_its_setting_over_a_real_socket() -> None:
    async with running_server("chargen", timeouts=Timeouts(write=0.3)) as server:
        sock = socket.create_connection(("127.0.0.1", tcp_port(server)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        start = trio.current_time()
        await wait_for(lambda: server.statistics().timeouts["write"], timeout=10, interval=0.02)
        elapsed = trio.current_time() - start
        sock.close()
    assert 0.25 < elapsed < SMOKE_LATEST


async def test_idle_timeout_smoke_fires_near_its_setting_over_a_real_socket() -> None:
    async with (
        running_server("echo", timeouts=Timeouts(idle=0.3)) as server,
        await connect(server) as stream,
    ):
        start = trio.current_time()
        with trio.fail_after(10):
            assert await stream.receive_some() == b""
        elapsed = trio.current_time() - start
    assert 0.25 < elapsed < SMOKE_LATEST


async def test_lifetime_timeout_smoke_fires_near_its_setting_over_a_real_socket() -> None:
    async with (
        running_server("chargen", timeouts=Timeouts(lifetime=0.3)) as server,
        await connect(server) as stream,
    ):
        start = trio.current_time()
        with trio.fail_after(10):
            while await stream.receive_some():
                pass
        elapsed = trio.current_time() - start
    assert 0.25 < elapsed < SMOKE_LATEST


async def test_daytime_sends_one_line_then_closes(backend: str) -> None:
    async with (
        running_server("daytime", backend=backend) as server,
        await connect(server) as stream,
    ):
        data = await receive_until_eof(stream)
    assert data.endswith(b"\r\n") and data.count(b"\n") == 1


async def test_discard_sends_nothing_and_counts_bytes(backend: str) -> None:
    async with running_server("discard", backend=backend) as server:
        async with await connect(server) as stream:
            await stream.send_all(b"x" * 100_000)
            await stream.send_eof()
            assert await stream.receive_some() == b""
        assert server.statistics().bytes_received == 100_000


async def test_unix_socket_mode_stale_file_and_cleanup(
    tmp_path: os.PathLike[str], backend: str
) -> None:
    path = os.path.join(os.fspath(tmp_path), "srv.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # a socket file nobody listens on: a dead server's leftover
    stale.close()
    async with running_server("echo", binds=[f"unix:{path}"], backend=backend) as server:
        assert server.addresses == [f"unix:{path}"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with pytest.raises(triosrv.BindError, match="address already in use"):
            async with running_server("echo", binds=[f"unix:{path}"]):
                pass
        stream = await trio.open_unix_socket(path)
        await stream.send_all(b"over unix")
        assert await stream.receive_some() == b"over unix"
        await stream.aclose()
    assert not os.path.exists(path)


async def test_unix_socket_mode_is_configurable(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(os.fspath(tmp_path), "srv.sock")
    async with running_server("echo", binds=[f"unix:{path}"], unix_mode=0o660):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660


async def test_bind_failure_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(triosrv.BindError) as info:
            async with running_server("echo", binds=[f"127.0.0.1:{port}"]):
                pass
    assert str(info.value.strerror) == f"cannot bind 127.0.0.1:{port}: address already in use"
    assert info.value.errno == errno.EADDRINUSE


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_loopback_bind() -> None:
    async with running_server("echo", binds=["[::1]:0"]) as server:
        assert server.addresses[0].startswith("tcp://[::1]:")
        port = int(server.addresses[0].rsplit(":", 1)[1])
        async with await trio.open_tcp_stream("::1", port) as stream:
            await stream.send_all(b"v6")
            assert await stream.receive_some() == b"v6"


async def test_accept_on_emfile_sheds_queued_clients_and_recovers(backend: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    async with running_server("echo", backend=backend) as server:
        clients = [trio.socket.socket() for _ in range(3)]
        try:
            # No free fd number below the limit: accept() fails with EMFILE.
            open_now = open_fds()
            lowest_free = min(n for n in range(len(open_now) + 1) if n not in open_now)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
            try:
                for client in clients:
                    await client.connect(("127.0.0.1", tcp_port(server)))
                for client in clients:  # closed at once instead of left hanging
                    with trio.fail_after(3):
                        assert await client.recv(10) == b""
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            stats = server.statistics()
            assert stats.accept_errors >= 1
            assert stats.shed == 3
            assert stats.state == "serving"
            with trio.fail_after(3):  # fds are free again: served as usual
                async with await connect(server) as stream:
                    await stream.send_all(b"back")
                    assert await stream.receive_some() == b"back"
        finally:
            for client in clients:
                client.close()


async def test_bytes_sent_counts_what_went_out_before_a_write_timeout() -> None:
    async def big_send(conn: Connection) -> None:
        await conn.send_all(b"x" * (8 * 1024 * 1024))

    async with (
        running_server(big_send, timeouts=Timeouts(write=0.3)) as server,
        await connect(server),  # a client that never reads
    ):
        await wait_for(lambda: server.statistics().timeouts["write"])
        stats = server.statistics()
    assert 0 < stats.bytes_sent < 8 * 1024 * 1024
