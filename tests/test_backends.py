"""The conformance suite: every server behaviour, once per backend.

In the style of Twisted's reactor-builder tests: the ``backend`` fixture below overrides
conftest's (which gives ``trio``) with one parameter per backend, and the behavioural
tests of ``test_server.py`` that take a ``backend`` are imported here, so pytest runs
each of them once per backend. The tests written in this module cover what the issue
asks of every backend besides: exact echo under many concurrent clients, half-close,
chargen's pattern, drain, handler-error isolation, cancellation mid-transfer, and the
select/poll/epoll specifics (FD_SETSIZE, every fd really passed to the syscall).

Time is real (sockets; the mock clock fires false timeouts while the kernel delivers
bytes): timing assertions are short real timeouts with generous tolerance.
``trio.testing``'s stream checks apply to the ``trio`` backend's connections only (the
others expose no stream); ``test_connection.py`` runs them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import socket
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

import triosrv
from triosrv import Limits, Timeouts
from triosrv._config import BACKENDS
from triosrv.lowlevel import _loop
from triosrv.protocols import Protocol, chargen_line
from triosrv.testing import open_fds, wait_for

from . import test_server
from .helpers import (
    StrictEcho,
    check_one_failure_is_isolated,
    connect,
    echo_all_at_once,
    random_payload,
    receive_exactly,
    receive_until_eof,
    running_server,
    tcp_port,
    triosrv_tasks,
    wait_until_no_connection,
)
from .test_cli import run_cli

LOOPS = ("epoll", "poll", "select", "nonblocking")
# An async function importable as module:callable, for the refusal tests.
HANDLER = "tests.helpers:connect"
# Seconds a hard stop of a server with 100 busy connections may take on a loaded
# machine (it takes milliseconds on a quiet one); see the cancel test for why real time.
CANCEL_BOUND = 2.0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn (overrides conftest's ``trio``)."""
    return str(request.param)


# -- test_server.py's behaviours, once per backend -----------------------------------

test_peer_reset_is_not_a_handler_error = test_server.test_peer_reset_is_not_a_handler_error
test_max_connections_wait_serves_newcomer_after_one_leaves = (
    test_server.test_max_connections_wait_serves_newcomer_after_one_leaves
)
test_max_connections_reject_closes_newcomer_and_counts = (
    test_server.test_max_connections_reject_closes_newcomer_and_counts
)
test_cancelling_the_enclosing_scope_stops_everything_at_once = (
    test_server.test_cancelling_the_enclosing_scope_stops_everything_at_once
)
test_write_timeout_closes_a_peer_that_never_reads_and_memory_stays_flat = (
    test_server.test_write_timeout_closes_a_peer_that_never_reads_and_memory_stays_flat
)
test_idle_timeout_over_a_real_socket_closes_an_idle_peer = (
    test_server.test_idle_timeout_over_a_real_socket_closes_an_idle_peer
)
test_lifetime_timeout_over_a_real_socket = test_server.test_lifetime_timeout_over_a_real_socket
test_daytime_sends_one_line_then_closes = test_server.test_daytime_sends_one_line_then_closes
test_discard_sends_nothing_and_counts_bytes = (
    test_server.test_discard_sends_nothing_and_counts_bytes
)
test_unix_socket_mode_stale_file_and_cleanup = (
    test_server.test_unix_socket_mode_stale_file_and_cleanup
)
test_accept_on_emfile_sheds_queued_clients_and_recovers = (
    test_server.test_accept_on_emfile_sheds_queued_clients_and_recovers
)


# -- data: echo, half-close, chargen --------------------------------------------------


@pytest.mark.parametrize("half_close", [False, True], ids=["full", "half-close"])
async def test_backend_echo_100_concurrent_clients_get_exactly_their_bytes(
    backend: str, half_close: bool
) -> None:
    rng = random.Random(hash((backend, half_close)))
    # Sizes up to 256 KiB: several partial sends and writable waits per connection,
    # yet about 13 MiB each way, so the seven backends stay quick.
    payloads = [random_payload(rng, 256 * 1024) for _ in range(100)]
    async with running_server("echo", backend=backend) as server:
        stats = await echo_all_at_once(server, payloads, half_close=half_close)
    assert stats.accepted == 100
    assert stats.backend == backend
    assert stats.handler_errors == stats.broken == 0


async def test_backend_half_close_echoes_everything_then_closes(backend: str) -> None:
    async with running_server("echo", backend=backend) as server:
        async with await connect(server) as stream:
            await stream.send_all(b"first ")
            await stream.send_all(b"second")
            await stream.send_eof()
            received = await receive_until_eof(stream, timeout=3)
        assert received == b"first second"
        await wait_until_no_connection(server)
        assert server.statistics().completed == 1


async def test_backend_chargen_stream_is_the_rfc864_pattern(backend: str) -> None:
    expected = b"".join(chargen_line(n) for n in range(300))  # > 3 cycles of 95 lines
    async with (
        running_server("chargen", backend=backend) as server,
        await connect(server) as stream,
    ):
        assert await receive_exactly(stream, len(expected)) == expected


@pytest.mark.parametrize("fast_path", [True, False], ids=["answer", "receive_data"])
async def test_backend_serves_what_one_receive_left_behind(backend: str, fast_path: bool) -> None:
    # 16-byte receives for a 4 KiB message that arrives at once: after each receive
    # more is waiting, which an edge-triggered epoll does not report again. Echo has
    # the ``answer`` fast path; Boom (below) is an echo without it.
    payload = random.Random(16).randbytes(4096)
    async with (
        running_server(
            "echo" if fast_path else triosrv.protocol_handler(Boom),
            backend=backend,
            limits=Limits(recv_size=16),
        ) as server,
        await connect(server) as stream,
    ):
        await stream.send_all(payload)
        assert await receive_exactly(stream, len(payload)) == payload


async def test_backend_gives_answer_only_what_the_protocol_may_send_back_whole(
    backend: str,
) -> None:
    # Receives of up to 256 KiB, four times the 64 KiB a driver hands one send: a
    # protocol's answer() must never see more than the max_bytes it is told.
    payload = random.Random(21).randbytes(1 << 20)
    async with (
        running_server(
            triosrv.protocol_handler(StrictEcho),
            backend=backend,
            limits=Limits(recv_size=256 * 1024),
        ) as server,
        await connect(server) as stream,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(stream.send_all, payload)
        assert await receive_exactly(stream, len(payload)) == payload
    assert server.statistics().handler_errors == 0


@pytest.mark.parametrize("fast_path", [True, False], ids=["answer", "receive_data"])
@pytest.mark.parametrize("recv_size", [65536, _loop.READ_SIZE_MIN], ids=["large", "smallest"])
async def test_backend_sees_the_eof_that_came_with_the_bytes(
    backend: str, fast_path: bool, recv_size: int
) -> None:
    # Bytes and FIN both wait before the server reads: its read returns the bytes and
    # leaves the EOF behind, which an edge-triggered epoll does not report again.
    # (A short read of a large receive size also makes the loop's size shrink, a path
    # of its own; at the smallest size only the EOF sends it there.)
    handler = "echo" if fast_path else triosrv.protocol_handler(Boom)
    limits = Limits(recv_size=recv_size)
    async with running_server(handler, backend=backend, limits=limits) as server:
        sock = socket.create_connection(("127.0.0.1", tcp_port(server)))
        sock.sendall(b"bytes, then EOF")  # plain calls: the server has not run yet
        sock.shutdown(socket.SHUT_WR)
        async with trio.SocketStream(trio.socket.from_stdlib_socket(sock)) as stream:
            received = await receive_until_eof(stream)
        assert received == b"bytes, then EOF"
        await wait_until_no_connection(server)


LINES = 1000


class Lines(Protocol):
    """Speaks first: LINES short lines, one per data_to_send() call, then closes."""

    def __init__(self) -> None:
        self._next = 0

    def receive_data(self, data: bytes) -> None:
        pass

    def data_to_send(self, max_bytes: int) -> bytes:
        if self._next == LINES:
            return b""
        self._next += 1
        return b"%d\n" % (self._next - 1)

    @property
    def close_after_flush(self) -> bool:
        return self._next == LINES


async def test_backend_protocol_speaking_in_short_chunks_is_heard_to_the_end(
    backend: str,
) -> None:
    # The loops send a few chunks per connection per pass; here the socket always has
    # room, so an edge-triggered epoll never reports it again: the loop must come back.
    async with (
        running_server(triosrv.protocol_handler(Lines), backend=backend) as server,
        await connect(server) as stream,
    ):
        received = await receive_until_eof(stream)
    assert received == b"".join(b"%d\n" % n for n in range(LINES))


@pytest.mark.parametrize("name", LOOPS)
async def test_backend_loop_accepts_a_whole_backlog_in_small_batches(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten clients queue up before the loop runs; it takes two per accept batch. An
    # edge-triggered epoll reports the listener once for all ten.
    monkeypatch.setattr("triosrv.lowlevel._loop.ACCEPT_BATCH", 2)
    async with running_server("echo", backend=name) as server:
        port = tcp_port(server)
        # Plain blocking connects: the kernel completes them; the loop has not run.
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
        try:
            streams = [trio.SocketStream(trio.socket.from_stdlib_socket(s)) for s in socks]
            with trio.fail_after(5):
                for n, stream in enumerate(streams):
                    await stream.send_all(b"%d" % n)
                    assert await stream.receive_some() == b"%d" % n
            assert server.statistics().accepted == 10
        finally:
            for sock in socks:
                sock.close()


@pytest.mark.parametrize("name", LOOPS)
@pytest.mark.parametrize("fast_path", [True, False], ids=["answer", "receive_data"])
async def test_backend_loop_receive_size_follows_the_peer(
    name: str, fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short chunks make the loop ask for less, down to READ_SIZE_MIN (no 64 KiB buffer
    # per receive); a bulk transfer makes it ask for recv_size again.
    asked: list[int] = []

    def read(fd: int, n: int) -> bytes:
        asked.append(n)
        return os.read(fd, n)

    monkeypatch.setattr(_loop, "os", types.SimpleNamespace(read=read, write=os.write))
    handler = "echo" if fast_path else triosrv.protocol_handler(Boom)
    bulk = random.Random(20).randbytes(1 << 20)
    async with (
        running_server(handler, backend=name) as server,
        await connect(server) as stream,
    ):
        for n in range(20):
            chunk = b"%063d" % n
            await stream.send_all(chunk)
            assert await receive_exactly(stream, len(chunk)) == chunk
        assert asked[-1] == _loop.READ_SIZE_MIN
        del asked[:]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, bulk)
            assert await receive_exactly(stream, len(bulk)) == bulk
    assert max(asked) == server.config.limits.recv_size


# -- drain, errors, cancellation ------------------------------------------------------


async def test_backend_shutdown_refuses_newcomers_and_lets_running_ones_finish(
    backend: str,
) -> None:
    payload = random.Random(7).randbytes(300_000)
    async with running_server("echo", backend=backend, timeouts=Timeouts(grace=5)) as server:
        port = tcp_port(server)
        stream = await connect(server)
        await stream.send_all(payload[:1000])
        assert await stream.receive_some() == payload[:1000]
        server.shutdown()
        assert server.statistics().state == "draining"
        with trio.fail_after(1):  # the listeners close within one pass of any backend
            while True:
                try:
                    newcomer = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    break
                await newcomer.aclose()
                await trio.sleep(0.01)
        received = bytearray()

        async def send_rest() -> None:
            await stream.send_all(payload[1000:])
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_rest)
            while chunk := await stream.receive_some():
                received += chunk
        await stream.aclose()
        with trio.fail_after(2):
            await server.wait_closed()
    assert bytes(received) == payload[1000:]
    assert server.statistics().completed == 1


async def test_backend_shutdown_closes_what_is_left_after_grace(backend: str) -> None:
    async with (
        running_server("echo", backend=backend) as server,
        await connect(server) as stream,
    ):
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
        server.shutdown(grace=0.5)
        # Still served while the grace runs (the timing of grace: test_server.py's smoke
        # test and the virtual-time one in test_connection.py).
        await stream.send_all(b"during grace")
        assert await receive_exactly(stream, len(b"during grace")) == b"during grace"
        with trio.fail_after(10):
            await server.wait_closed()
        with trio.fail_after(1):
            try:
                assert await stream.receive_some() == b""
            except trio.BrokenResourceError:
                pass  # closed with a reset: also closed
    assert server.statistics().state == "closed"


class Boom(Protocol):
    """Echo that raises on a chunk starting with b"boom": a protocol bug to isolate."""

    def __init__(self) -> None:
        self._pending = b""
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise RuntimeError("planted failure")
        self._eof = not data
        self._pending += data

    def data_to_send(self, max_bytes: int) -> bytes:
        out, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return out

    @property
    def close_after_flush(self) -> bool:
        return self._eof and not self._pending


async def test_backend_protocol_error_is_isolated_logged_and_counted(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_server(triosrv.protocol_handler(Boom), backend=backend) as server:
        await check_one_failure_is_isolated(server, caplog, others=10)


async def test_backend_handler_errors_raise_stops_the_server(backend: str) -> None:
    with pytest.raises(RuntimeError, match="planted failure"):
        handler = triosrv.protocol_handler(Boom)
        async with (
            running_server(handler, backend=backend, handler_errors="raise") as server,
            await connect(server) as stream,
        ):
            await stream.send_all(b"boom")
            await trio.sleep_forever()


async def test_backend_cancel_with_100_connections_mid_transfer_is_prompt_and_clean(
    backend: str,
) -> None:
    # Real sockets because six of the seven backends serve only real sockets (add_stream
    # is the trio backend's), and their cancellation crosses into threads and syscalls
    # that a virtual clock cannot see. Not a speed: the server's nearest deadline is the
    # 60 s idle timeout, so a backend whose loop or threads waited for a timer (or for
    # one poll interval per connection) instead of being woken would take far longer
    # than the generous bound below.
    fds_before = open_fds()
    streams: list[trio.SocketStream] = []
    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                triosrv.serve,
                triosrv.load_handler("chargen"),
                triosrv.ServerConfig(binds="127.0.0.1:0", backend=backend),
            )
            streams = [await connect(server) for _ in range(100)]
            for stream in streams:  # every connection is sending when we cancel
                await stream.receive_some(10)
            start = trio.current_time()
            nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    for stream in streams:
        await stream.aclose()
    assert elapsed < CANCEL_BOUND
    assert server.state == "closed"
    assert triosrv_tasks() == []
    assert open_fds() == fds_before
    # The leak fixture checks the threads: none but trio's idle cached workers.


async def test_backend_refuses_an_async_handler_unless_trio(backend: str) -> None:
    async def handler(conn: triosrv.Connection) -> None:
        pass

    config = triosrv.ServerConfig(binds="127.0.0.1:0", backend=backend)
    if backend == "trio":
        async with running_server(handler, backend=backend):
            return
    with pytest.raises(triosrv.ConfigError, match=f"backend: '{backend}' .*async handler"):
        await triosrv.serve(handler, config)


def test_backend_config_names_the_allowed_backends() -> None:
    with pytest.raises(triosrv.ConfigError) as info:
        triosrv.ServerConfig(backend="kqueue")
    message = str(info.value)
    assert message.startswith("backend: expected one of 'trio', 'trio-fd', 'epoll'")
    assert "\n" not in message
    with pytest.raises(triosrv.ConfigError, match="nonblocking_interval"):
        triosrv.ServerConfig(nonblocking_interval=0)


# -- the multiplexers, seen through the server -----------------------------------------


@pytest.mark.parametrize("name", ["select", "poll", "epoll"])
async def test_backend_multiplexer_really_watches_every_fd(name: str) -> None:
    async with running_server("echo", backend=name) as server:
        streams = [await connect(server) for _ in range(20)]
        for stream in streams:
            await stream.send_all(b"x")
            assert await stream.receive_some() == b"x"
        loop = server._backend.loop  # type: ignore[attr-defined]
        mux = loop.mux
        calls = mux.calls
        await streams[0].send_all(b"y")
        assert await streams[0].receive_some() == b"y"
        # The call that found it watched the listener, the 20 connections, the wake fd.
        assert mux.calls > calls
        assert mux.last_watched == 1 + 20 + 1
        assert mux.name == {"select": "select", "poll": "poll", "epoll": "epoll_wait"}[name]
        for stream in streams:
            await stream.aclose()


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Raise RLIMIT_NOFILE for a test with a few thousand sockets; restore it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if wanted < 3000:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for 1100 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _open_1100(server: triosrv.Server, streams: list[trio.SocketStream]) -> tuple[int, int]:
    """1100 clients, one after the other (so the server's fds climb with the clients'),
    each sending one byte and kept open: (echoed, closed by the server)."""
    echoed = closed = 0
    with trio.fail_after(60):
        for _ in range(1100):
            stream = await connect(server)
            streams.append(stream)
            try:
                await stream.send_all(b"!")
                data = await stream.receive_some()
            except trio.BrokenResourceError:
                data = b""
            if data == b"!":
                echoed += 1
            else:
                closed += 1
    return echoed, closed


async def test_backend_select_refuses_fds_over_fd_setsize_and_keeps_serving(
    many_fds: None, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(max_connections=5000)
    streams: list[trio.SocketStream] = []
    async with running_server("echo", backend="select", limits=limits) as server:
        try:
            echoed, closed = await _open_1100(server, streams)
        finally:
            for stream in streams:
                await stream.aclose()
        stats = server.statistics()
        assert echoed > 0 and closed > 0 and echoed + closed == 1100
        assert stats.refused_fd_setsize == closed
        assert stats.state == "serving"
        with trio.fail_after(5):  # fds are low again: served as usual
            await wait_for(lambda: not server.statistics().active)
            async with await connect(server) as stream:
                await stream.send_all(b"still here")
                assert await stream.receive_some() == b"still here"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    refusals = [w for w in warnings if "FD_SETSIZE (1024)" in w]
    assert refusals, warnings
    assert "the trio, trio-fd, epoll, poll, nonblocking, blocking backends" in refusals[0]


@pytest.mark.parametrize("name", ["poll", "epoll"])
async def test_backend_poll_and_epoll_serve_1100_connections(many_fds: None, name: str) -> None:
    limits = Limits(max_connections=5000)
    streams: list[trio.SocketStream] = []
    async with running_server("echo", backend=name, limits=limits) as server:
        try:
            echoed, closed = await _open_1100(server, streams)
        finally:
            for stream in streams:
                await stream.aclose()
        assert (echoed, closed) == (1100, 0)
        assert server.statistics().peak_active == 1100


async def test_backend_loop_connections_show_in_server_connections() -> None:
    for name in LOOPS:
        async with (
            running_server("echo", backend=name) as server,
            await connect(server) as stream,
        ):
            await stream.send_all(b"x")
            assert await stream.receive_some() == b"x"
            (conn,) = server.connections()
            assert conn.id == 1 and conn.peer.startswith("127.0.0.1:")
            assert conn.local == f"127.0.0.1:{tcp_port(server)}"
            assert (conn.bytes_received, conn.bytes_sent) == (1, 1)
            assert conn.draining is False
            assert conn.waiting == "receive" and conn.next_deadline == "idle"


# -- the command line ------------------------------------------------------------------


def test_backend_cli_refuses_an_async_handler_in_one_line() -> None:
    result = run_cli("listen", "--port", "0", "--backend", "epoll", "--handler", HANDLER)
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert error == [
        "Error: backend: 'epoll' drives sans-IO protocols itself and cannot run the async "
        "handler connect; give a Protocol subclass, or use backend 'trio'"
    ]
    result = run_cli("listen", "--port", "0", "--backend", "kqueue")
    assert result.returncode == 2
    assert "'kqueue' is not one of 'trio', 'trio-fd', 'epoll'" in result.stderr


def test_backend_bench_script_runs_at_a_tiny_size() -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    servers = "trio.serve_tcp,triosrv trio,triosrv epoll"
    args = ["--servers", servers, "--vs", "trio.serve_tcp,triosrv trio", "--runs", "1"]
    args += ["--duration", "0.2", "--warmup", "0.05", "--connections", "5", "--paired", "0"]
    # subprocess.run kills the script (by its pid) if it outlives the timeout.
    result = subprocess.run(
        [sys.executable, str(script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [row["server"] for row in doc["rows"]] == servers.split(",")
    assert all(row["errors"] == 0 and row["rtps"] > 0 for row in doc["rows"])
    epoll = doc["rows"][2]
    assert set(epoll["vs"]) == {"trio.serve_tcp", "triosrv trio"}
    assert all(value > 0 for value in epoll["vs"].values())


async def test_backend_plain_only_refuses_tls_and_proxy_unless_trio() -> None:
    for name in BACKENDS[1:]:
        config = triosrv.ServerConfig(binds="127.0.0.1:0", backend=name, proxy_protocol="v1")
        with pytest.raises(triosrv.ConfigError, match="PROXY protocol need backend 'trio'"):
            await triosrv.serve(triosrv.load_handler("echo"), config)


async def test_backend_add_stream_needs_the_trio_backend() -> None:
    client, server_end = trio.testing.memory_stream_pair()
    async with running_server("echo", backend="epoll") as server:
        with pytest.raises(RuntimeError, match="add_stream\\(\\) needs the 'trio' backend"):
            await server.add_stream(server_end)
    await client.aclose()
