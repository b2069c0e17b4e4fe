"""The isolation rule (triosrv/_isolation.py): nothing a peer sends, no exception a
handler raises and no accept() error ends the server. Every attack test ends by
checking that a connection opened before it still echoes."""

from __future__ import annotations

import errno
import json
import logging
import socket
import subprocess
import sys
import textwrap
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

import triosrv
from triosrv._config import BACKENDS
from triosrv._isolation import TRANSIENT_ACCEPT_ERRNOS, RateLimitFilter
from triosrv.diagnostics import serve_metrics
from triosrv.protocols import Echo
from triosrv.testing import wait_for

from .diag_helpers import server_with_control
from .helpers import connect, receive_until_eof, running_server


async def assert_still_echoes(stream: trio.abc.Stream, payload: bytes = b"still here") -> None:
    """The "still serving" invariant: an earlier connection still echoes."""
    await stream.send_all(payload)
    received = b""
    with trio.fail_after(5):
        while len(received) < len(payload):
            chunk = await stream.receive_some()
            assert chunk, "the earlier connection was closed"
            received += chunk
    assert received == payload


# -- 1. the metrics endpoint: peer input never escapes ------------------------------

BAD_ACCEPTS = [
    "text/plain; version=x",
    "application/openmetrics-text; version=1.0.0-rc1",
    "text/plain;version=1.0.x",
    "application/openmetrics-text; version=",
    "*/*; version=\udcff",
]


@pytest.mark.parametrize("accept", BAD_ACCEPTS)
async def test_isolation_metrics_unreadable_accept_gets_text_format(accept: str) -> None:
    async with running_server() as server, trio.open_nursery() as nursery:
        url = await nursery.start(serve_metrics, server, "127.0.0.1:0")
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        async with await connect(server) as earlier:
            await assert_still_echoes(earlier)
            async with await trio.open_tcp_stream("127.0.0.1", port) as scraper:
                head = f"GET /metrics HTTP/1.1\r\nhost: x\r\naccept: {accept}\r\n"
                await scraper.send_all(head.encode("utf-8", "surrogateescape") + b"\r\n")
                reply = b""
                with trio.fail_after(5):
                    while b"triosrv_state" not in reply:
                        chunk = await scraper.receive_some()
                        assert chunk, f"closed without an answer: {reply!r}"
                        reply += chunk
                assert reply.startswith(b"HTTP/1.1 200 ")
                if accept in BAD_ACCEPTS[:3]:  # what prometheus_client cannot read
                    assert b"content-type: text/plain; version=0.0.4" in reply
            await assert_still_echoes(earlier)
        assert server.state == "serving"
        nursery.cancel_scope.cancel()


async def test_isolation_metrics_failing_collector_is_a_500_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from triosrv.diagnostics import _metrics

    def broken(registry: Any) -> bytes:
        raise RuntimeError("planted failure")

    monkeypatch.setattr(_metrics, "_choose_encoder", lambda accept: (broken, "text/plain"))
    async with running_server() as server, trio.open_nursery() as nursery:
        url = await nursery.start(serve_metrics, server, "127.0.0.1:0")
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        async with await connect(server) as earlier:
            async with await trio.open_tcp_stream("127.0.0.1", port) as scraper:
                await scraper.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
                with trio.fail_after(5):
                    reply = await scraper.receive_some()
                assert reply.startswith(b"HTTP/1.1 500 ")
            await assert_still_echoes(earlier)
        nursery.cancel_scope.cancel()


# -- 2. handler BaseExceptions are isolated in log mode ------------------------------

BASE_EXCEPTIONS = [SystemExit, KeyboardInterrupt, GeneratorExit]


class RaisingProtocol(Echo):
    """Echo that raises ``EXC`` on b"boom" (for the protocol-driving backends)."""

    __slots__ = ()
    EXC: type[BaseException] = SystemExit

    def receive_data(self, data: bytes) -> None:
        if data == b"boom":
            raise self.EXC("planted failure")
        super().receive_data(data)

    def answer(self, data: bytes, max_bytes: int) -> bytes | None:
        return None if data == b"boom" else super().answer(data, max_bytes)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
async def test_isolation_handler_base_exception_ends_only_its_connection(
    backend: str, exc_type: type[BaseException]
) -> None:
    protocol = type("Raising", (RaisingProtocol,), {"__slots__": (), "EXC": exc_type})
    handler = triosrv.protocol_handler(protocol)
    async with running_server(handler, backend=backend) as server:
        async with await connect(server) as earlier:
            await assert_still_echoes(earlier)
            async with await connect(server) as bad:
                await bad.send_all(b"boom")
                assert await receive_until_eof(bad) == b""
            await assert_still_echoes(earlier)
        assert server.statistics().handler_errors == 1
        assert server.state == "serving"


@pytest.mark.parametrize("exc_type", BASE_EXCEPTIONS)
async def test_isolation_async_handler_base_exception_is_counted(
    exc_type: type[BaseException],
) -> None:
    async def handler(conn: triosrv.Connection) -> None:
        async for chunk in conn:
            if chunk == b"boom":
                raise exc_type("planted failure")
            await conn.send_all(chunk)

    async with running_server(handler) as server:
        async with await connect(server) as earlier:
            async with await connect(server) as bad:
                await bad.send_all(b"boom")
                assert await receive_until_eof(bad) == b""
            await assert_still_echoes(earlier)
        assert server.statistics().handler_errors == 1


def test_isolation_raise_mode_keeps_trio_semantics_for_system_exit() -> None:
    # In a subprocess: trio ends the whole run when a task raises SystemExit, which
    # would end this test process's run too.
    script = textwrap.dedent(
        """
        import socket, sys, trio, triosrv

        async def handler(conn):
            await conn.receive_some()
            sys.exit(3)

        async def main():
            config = triosrv.ServerConfig(binds=["127.0.0.1:0"], handler_errors="raise")
            async with trio.open_nursery() as nursery:
                server = await nursery.start(triosrv.serve, handler, config)
                port = int(server.addresses[0].rsplit(":", 1)[1])
                client = await trio.open_tcp_stream("127.0.0.1", port)
                await client.send_all(b"x")
                await trio.sleep(10)  # real sleep: a subprocess; the handler's exit ends it

        trio.run(main)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, check=False
    )
    # trio's semantics: the handler's SystemExit leaves the nurseries (grouped) and
    # ends the run; nothing in triosrv turns it into a counted handler error.
    assert result.returncode != 0
    assert b"SystemExit: 3" in result.stderr


# -- 3. auxiliary clients cannot lock the operator out ------------------------------


async def test_isolation_control_clients_that_never_read_cannot_lock_out_status() -> None:
    from triosrv.diagnostics import _control

    async with server_with_control() as (server, path), await connect(server) as earlier:
        hogs = []
        for _ in range(_control.MAX_CLIENTS + 4):
            hog = await trio.open_unix_socket(path)
            # Pipelined requests and no reads: the answers fill the socket buffers
            # and the endpoint's send blocks.
            await hog.send_all(b'{"cmd":"status"}\n' * 400)
            hogs.append(hog)
        await trio.testing.wait_all_tasks_blocked(0.05)
        with trio.fail_after(5):
            answer = await _control.control_request(path, {"cmd": "status"})
        assert answer["state"] == "serving"
        await assert_still_echoes(earlier)
        for hog in hogs:
            await hog.aclose()


async def test_isolation_control_write_timeout_drops_a_client_that_never_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from triosrv.diagnostics import _serving

    monkeypatch.setattr(_serving, "WRITE_TIMEOUT", 0.2)
    async with server_with_control() as (_server, path):
        hog = await trio.open_unix_socket(path)
        async with hog:
            await hog.send_all(b'{"cmd":"status"}\n' * 400)
            # Real time: the endpoint's write timeout runs on a real socket. Once it
            # fires the endpoint closes, and what is buffered ends in EOF.
            with trio.fail_after(10):
                while await hog.receive_some(1 << 20):
                    await trio.sleep(0.3)  # real sleep: read slowly so the server's send blocks


# -- 4. the status document is paged, capped and built in steps ---------------------


T = TypeVar("T")


async def _counting_other_steps(work: Awaitable[T]) -> tuple[T, int]:
    """Await ``work`` beside a task that counts its own steps: how often the event loop
    ran something else while ``work`` was in progress (0 if it never yielded)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    await trio.testing.wait_all_tasks_blocked()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()
        ticks = 0
        result = await work
        nursery.cancel_scope.cancel()
    return result, ticks


async def test_isolation_status_pages_connections_and_yields_while_building() -> None:
    from triosrv.diagnostics._status import CHUNK, build_status_document

    async with running_server(binds=()) as server:
        pairs = []
        for _ in range(CHUNK * 3 + 7):
            client, served = trio.testing.memory_stream_pair()
            await server.add_stream(served)
            pairs.append(client)
        line, ticks = await _counting_other_steps(
            build_status_document(server, started_at=0, started_wall=0, offset=5, limit=CHUNK * 3)
        )
        assert ticks >= 3  # other tasks ran while the document was built
        doc = json.loads(line)
        assert doc["connections_total"] == len(pairs) and doc["connections_offset"] == 5
        ids = [c["id"] for c in doc["connections"]]
        assert ids == sorted(ids) and len(ids) == CHUNK * 3
        for client in pairs:
            await client.aclose()


@pytest.mark.parametrize("endpoint", ["server", "master"])
async def test_isolation_control_status_answer_yields_while_building(endpoint: str) -> None:
    # The answer `triosrv status` gets: from the server's own endpoint (serve_control)
    # and from the master's, which `triosrv listen` runs around its local generation.
    from triosrv._master import LocalGeneration, Master
    from triosrv._master_status import MasterControl
    from triosrv._options import effective_options, load_listen
    from triosrv.diagnostics import ControlEndpoint
    from triosrv.diagnostics._status import CHUNK

    async with running_server(binds=()) as server:
        pairs = []
        for _ in range(CHUNK * 4):
            client, served = trio.testing.memory_stream_pair()
            await server.add_stream(served)
            pairs.append(client)
        answerer: ControlEndpoint
        if endpoint == "master":
            options = effective_options({"port": 0})
            config, handler = load_listen(options)
            master = Master({"port": 0}, None, options, config, handler)
            generation = LocalGeneration(1, handler, config)
            generation.server, generation.state = server, "serving"
            master.generations.append(generation)
            master.current = generation
            answerer = MasterControl(master)
        else:
            answerer = ControlEndpoint(server)
        (line, _after), ticks = await _counting_other_steps(answerer.answer(b'{"cmd": "status"}'))
        # Other tasks ran between the chunks: snapshots and encoding, a chunk at a time.
        assert ticks >= 4, ticks
        doc = json.loads(line)
        assert doc["connections_total"] == len(pairs)
        ids = [c["id"] for c in doc["connections"]]
        assert ids == sorted(ids) and len(ids) == len(pairs)
        for client in pairs:
            await client.aclose()


async def test_isolation_status_rejects_bad_pages() -> None:
    async with server_with_control() as (_server, path):
        from triosrv.diagnostics import control_request

        for bad in ({"limit": -1}, {"limit": 10**6}, {"offset": "x"}, {"limit": True}):
            answer = await control_request(path, {"cmd": "status", **bad})
            assert "error" in answer and next(iter(bad)) in answer["error"]


# -- 6. hostile control input is bad input, not an internal error -------------------


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000 + b"\n",
        b'{"cmd":"status","limit":' + b"9" * 10_000 + b"}\n",
        b'{"cmd": "status", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}\n",
    ],
)
async def test_isolation_control_hostile_json_gets_an_error_reply(
    line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    from triosrv.diagnostics._control import MAX_REQUEST

    async with server_with_control() as (server, path), await connect(server) as earlier:
        async with await trio.open_unix_socket(path) as client:
            await client.send_all(line[: MAX_REQUEST - 1].rstrip(b"\n") + b"\n")
            with trio.fail_after(5):
                answer = await client.receive_some()
        assert json.loads(answer).keys() == {"error"}
        await assert_still_echoes(earlier)
    assert not [r for r in caplog.records if r.exc_info]


# -- 7. log floods are rate-limited, counters stay exact ----------------------------


async def test_isolation_failing_handlers_do_not_flood_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(conn: triosrv.Connection) -> None:
        raise RuntimeError("planted failure")

    caplog.set_level(logging.INFO, "triosrv")
    async with running_server(handler) as server:
        for _ in range(60):
            async with await connect(server) as client:
                await receive_until_eof(client)
        await wait_for(lambda: server.statistics().handler_errors >= 60)
    assert server.statistics().handler_errors == 60
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert 1 <= len(tracebacks) <= 5
    summaries = [r.getMessage() for r in caplog.records if "suppressed" in r.getMessage()]
    suppressed = sum(int(m.split()[1]) for m in summaries)
    assert suppressed == 60 - len(tracebacks)


def test_isolation_rate_limit_filter_windows() -> None:
    now = [0.0]
    logger = logging.getLogger("triosrv.test-rate-limit")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    keep = Keep()
    logger.addHandler(keep)
    limit = RateLimitFilter(logger, burst=2, window=10, clock=lambda: now[0])
    logger.addFilter(limit)
    try:
        for i in range(5):
            logger.warning("event %d", i, extra={"rate_limit": "k"})
        logger.warning("other")  # not limited
        now[0] = 11
        logger.warning("event 5", extra={"rate_limit": "k"})
        limit.flush()
    finally:
        logger.removeFilter(limit)
        logger.removeHandler(keep)
    assert records == [
        "event 0",
        "event 1",
        "other",
        "suppressed 3 similar log record(s) (k) in the last 10 s",
        "event 5",
    ]


# -- 9. accept() errors never end the server, on every backend ----------------------

# Every errno accept(2) documents (EAGAIN aside, which is "nothing queued").
ACCEPT_ERRNOS = sorted(
    {
        errno.EBADF,
        errno.ECONNABORTED,
        errno.EFAULT,
        errno.EINTR,
        errno.EINVAL,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.ENOTSOCK,
        errno.EOPNOTSUPP,
        errno.EPERM,
        errno.EPROTO,
        *TRANSIENT_ACCEPT_ERRNOS,
    }
)


class FaultySocket(socket.socket):
    """A listening socket whose next ``accept()`` raises a planted errno."""

    __slots__ = ()
    planted: list[int] = []  # noqa: RUF012 - one shared queue per test (see fixture)

    def accept(self) -> tuple[socket.socket, Any]:
        if FaultySocket.planted:
            code = FaultySocket.planted.pop(0)
            raise OSError(code, f"planted {errno.errorcode[code]}")
        return super().accept()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_isolation_every_accept_errno_is_survived(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from triosrv import _isolation

    # Real time: the loop backends pause real seconds; keep the unexpected pause short.
    monkeypatch.setattr(_isolation, "UNEXPECTED_PAUSE", 0.01)
    monkeypatch.setattr(_isolation, "RESOURCE_PAUSE", 0.01)
    monkeypatch.setattr(FaultySocket, "planted", [])
    async with running_server(backend=backend) as server:
        server._listeners[0].sock.__class__ = FaultySocket
        async with await connect(server) as earlier:
            await assert_still_echoes(earlier)
            for code in ACCEPT_ERRNOS:
                FaultySocket.planted.append(code)
                async with await connect(server) as client:
                    if code in (errno.EMFILE, errno.ENFILE):
                        # Out of fds: the server sheds its queue so that the queued
                        # clients fail fast (_accept.py). This client is shed if it was
                        # queued when the error came (the nonblocking loop may meet the
                        # planted error before it connects): closed or echoed, no hang.
                        try:
                            await client.send_all(b"x")
                            with trio.fail_after(5):
                                assert await client.receive_some() in (b"", b"x")
                        except trio.BrokenResourceError:
                            pass  # shed: reset by the server, as _accept.py means to
                    else:
                        try:
                            await assert_still_echoes(client, errno.errorcode[code].encode())
                        except trio.TooSlowError:
                            raise AssertionError(f"no echo after {errno.errorcode[code]}") from None
                await assert_still_echoes(earlier)
        assert server.statistics().accept_errors == len(ACCEPT_ERRNOS)
        assert server.state == "serving"
        server._listeners[0].sock.__class__ = socket.socket


async def test_isolation_metrics_and_control_accept_errors_are_survived(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from triosrv.diagnostics import _serving

    monkeypatch.setattr(FaultySocket, "planted", [errno.EPROTO, errno.EINVAL, errno.EMFILE])
    monkeypatch.setattr(_serving, "accept_error_pause", lambda exc: 0.0)
    real_accept_loop = _serving.accept_loop

    async def faulty_accept_loop(sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        sock.__class__ = FaultySocket
        try:
            await real_accept_loop(sock, *args, **kwargs)
        finally:
            sock.__class__ = socket.socket

    monkeypatch.setattr(_serving, "accept_loop", faulty_accept_loop)
    from triosrv.diagnostics import _control

    monkeypatch.setattr(_control, "accept_loop", faulty_accept_loop)
    async with server_with_control() as (server, path):
        with trio.fail_after(5):
            answer = await _control.control_request(path, {"cmd": "status"})
        assert answer["state"] == "serving"
        assert FaultySocket.planted == []
        async with await connect(server) as earlier:
            await assert_still_echoes(earlier)


async def test_isolation_deadline_keeper_survives_a_connection_that_cannot_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timeouts = triosrv.Timeouts(idle=1, write=None, lifetime=None)
    async with running_server(binds=(), timeouts=timeouts) as server:
        bad_client, bad_served = trio.testing.memory_stream_pair()
        good_client, good_served = trio.testing.memory_stream_pair()
        bad = await server.add_stream(bad_served)
        await server.add_stream(good_served)
        assert bad is not None

        def cannot_stop(kind: str, timeouts: object) -> None:
            raise RuntimeError("planted failure")

        bad.expire = cannot_stop  # type: ignore[method-assign]
        # Virtual time: the autojump clock runs past the idle timeout at once.
        await trio.sleep_until(autojump_clock.current_time() + 1.5)
        # The keeper went on: the good connection's idle timeout fired and closed it.
        assert await good_client.receive_some() == b""
        assert server.statistics().timeouts["idle"] >= 1
        await bad_client.aclose()
        bad_served_conn = bad
        bad_served_conn.cancel_scope.cancel()


async def test_isolation_control_error_log_line_is_the_plain_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from triosrv.diagnostics import control_request

    async with server_with_control() as (_server, path):
        answer = await control_request(path, {"cmd": "status", "limit": -1})
    assert "limit" in answer["error"]
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("control: ")]
    assert line == f"control: {answer['error']}"
