"""TLS: trio.SSLStream under the handshake timeout, with trustme certificates."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme

import triosrv
from triosrv._preamble import TLSConnection, load_tls_context
from triosrv.testing import wait_for

from .helpers import connect, running_server, tcp_port

LISTEN = [sys.executable, "-m", "triosrv", "listen", "--port", "0"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certfile(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(path)
    return str(path)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def tls_connect(server: triosrv.Server, ca: trustme.CA) -> trio.SSLStream[trio.SocketStream]:
    stream = trio.SSLStream(await connect(server), client_context(ca), server_hostname="localhost")
    await stream.do_handshake()
    return stream


class Recorder:
    """A handler that remembers the connections it saw, then echoes."""

    def __init__(self) -> None:
        self.seen: list[triosrv.Connection] = []

    async def __call__(self, conn: triosrv.Connection) -> None:
        self.seen.append(conn)
        async for chunk in conn:
            await conn.send_all(chunk)


async def test_tls_echo_reaches_handler_over_ssl_stream(ca: trustme.CA, certfile: str) -> None:
    handler = Recorder()
    async with running_server(handler, tls_certfile=certfile) as server:
        stream = await tls_connect(server, ca)
        async with stream:
            await stream.send_all(b"hello over tls")
            assert await stream.receive_some(100) == b"hello over tls"
    [conn] = handler.seen
    assert isinstance(conn, TLSConnection)
    assert isinstance(conn, triosrv.StreamConnection) and isinstance(conn, triosrv.Connection)
    assert isinstance(conn.stream, trio.SSLStream)
    assert conn.peer.startswith("127.0.0.1:")


async def test_tls_failed_handshake_is_logged_and_never_reaches_handler(
    certfile: str, caplog: pytest.LogCaptureFixture
) -> None:
    handler = Recorder()
    caplog.set_level(logging.INFO, logger="triosrv")
    async with running_server(handler, tls_certfile=certfile) as server:
        async with await connect(server) as plain:
            local_port = plain.socket.getsockname()[1]
            await plain.send_all(b"GET / HTTP/1.0\r\n\r\n")
            with trio.fail_after(5):
                assert await plain.receive_some(100) == b""  # closed by the server
        await wait_for(lambda: server.statistics().handshake_failures["tls"])
    assert handler.seen == []
    [record] = [r for r in caplog.records if "handshake failed" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert f"127.0.0.1:{local_port}" in record.getMessage()


async def test_tls_silent_client_is_closed_at_handshake_timeout(certfile: str) -> None:
    handler = Recorder()
    timeouts = triosrv.Timeouts(handshake=0.3)
    async with running_server(handler, tls_certfile=certfile, timeouts=timeouts) as server:
        async with await connect(server) as silent:
            # Real time over real sockets: the handshake timeout is 0.3 s, so
            # 10 s is a generous bound, not a speed claim.
            with trio.fail_after(10):
                assert await silent.receive_some(100) == b""
        stats = server.statistics()
        assert stats.timeouts["handshake"] == 1
        assert stats.handshake_failures["tls"] == 0
    assert handler.seen == []


async def test_tls_handshake_timeout_leaves_other_clients_served(
    ca: trustme.CA, certfile: str
) -> None:
    timeouts = triosrv.Timeouts(handshake=0.5)
    async with running_server(Recorder(), tls_certfile=certfile, timeouts=timeouts) as server:
        silent = await connect(server)  # a silent client holds a slot...
        stream = await tls_connect(server, ca)  # ...and does not block this one
        async with silent, stream:
            await stream.send_all(b"x")
            assert await stream.receive_some(10) == b"x"


def test_tls_bad_certfile_is_one_line_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(triosrv.ConfigError, match="tls_certfile: cannot load") as info:
        load_tls_context(str(missing))
    assert "\n" not in str(info.value)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(triosrv.ConfigError, match="tls_certfile"):
        load_tls_context(str(garbage))


def test_tls_keyfile_without_certfile_is_refused() -> None:
    with pytest.raises(triosrv.ConfigError, match="tls_keyfile: needs tls_certfile"):
        triosrv.ServerConfig(tls_keyfile="key.pem")


def test_tls_cli_bad_certfile_exits_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [*LISTEN, "--certfile", str(tmp_path / "missing.pem")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "certfile: cannot load" in result.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_openssl_s_client_completes_handshake_and_gets_echo(
    ca: trustme.CA, certfile: str, tmp_path: Path
) -> None:
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_path)
    async with running_server("echo", tls_certfile=certfile) as server:
        command = ["openssl", "s_client", "-connect", f"127.0.0.1:{tcp_port(server)}"]
        command += ["-servername", "localhost", "-CAfile", str(ca_path)]
        # -verify_return_error: a certificate that does not verify aborts the handshake;
        # -quiet -no_ign_eof: print only the data, and close when stdin ends.
        command += ["-verify_return_error", "-quiet", "-no_ign_eof"]
        proc = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            await proc.stdin.send_all(b"hello from s_client\n")
            received = b""
            with trio.fail_after(20):
                while b"hello from s_client\n" not in received:
                    chunk = await proc.stdout.receive_some(1000)
                    assert chunk, f"s_client ended early: {received!r}"
                    received += chunk
            await proc.stdin.aclose()
            with trio.fail_after(20):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    await pipe.aclose()
    assert received == b"hello from s_client\n"
