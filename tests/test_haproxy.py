"""A real HAProxy (Debian's package) in front of triosrv with send-proxy-v2.

The configuration is the documentation's: ``examples/haproxy.cfg``, which
``docs/howto/haproxy.md`` includes (checked here too), with its two ports substituted.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import trio

import triosrv

from .helpers import receive_exactly, running_server, tcp_port

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "haproxy.cfg"
FRONTEND, BACKEND = "127.0.0.1:7000", "127.0.0.1:7001"  # as written in the example


def test_haproxy_howto_includes_the_example() -> None:
    howto = (ROOT / "docs" / "howto" / "haproxy.md").read_text()
    assert "```{literalinclude} ../../examples/haproxy.cfg\n" in howto
    text = CONFIG.read_text()
    assert FRONTEND in text and f"{BACKEND} send-proxy-v2" in text


def free_port() -> int:
    # HAProxy binds its frontend itself; a port the kernel just handed out is free
    # unless another process takes it in the next instant (then the test fails loudly).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PeerLine:
    """Tells the client which peer it saw, then echoes; ignores health checks."""

    def __init__(self) -> None:
        self.peers: list[str] = []

    async def __call__(self, conn: triosrv.Connection) -> None:
        self.peers.append(conn.peer)
        await conn.send_all(f"{conn.peer} {conn.local}\n".encode())
        async for chunk in conn:
            await conn.send_all(chunk)


async def connect_when_up(port: int, proc: trio.Process) -> trio.SocketStream:
    with trio.fail_after(30):
        while True:
            assert proc.returncode is None, "haproxy exited"
            try:
                return await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)  # real sleep: waiting for haproxy to bind


async def read_line(stream: trio.SocketStream) -> str:
    data = b""
    with trio.fail_after(30):
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(200)
            assert chunk, f"closed after {data!r}"
            data += chunk
    return data.decode().strip()


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy (.ci/run installs it)")
async def test_haproxy_send_proxy_v2_gives_handler_the_client_address(tmp_path: Path) -> None:
    handler = PeerLine()
    async with running_server(handler, proxy_protocol="v2") as server:
        frontend = free_port()
        config = CONFIG.read_text()
        config = config.replace(FRONTEND, f"127.0.0.1:{frontend}")
        config = config.replace(BACKEND, f"127.0.0.1:{tcp_port(server)}")
        (tmp_path / "haproxy.cfg").write_text(config)
        command = ["haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")]
        proc = await trio.lowlevel.open_process(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            stream = await connect_when_up(frontend, proc)
            async with stream:
                client_port = stream.socket.getsockname()[1]
                line = await read_line(stream)
                await stream.send_all(b"through haproxy")
                echoed = await receive_exactly(stream, 15, timeout=30)
        finally:
            proc.kill()
            await proc.wait()
    # The client's own address and port, not HAProxy's outgoing connection.
    assert line == f"127.0.0.1:{client_port} 127.0.0.1:{frontend}"
    assert echoed == b"through haproxy"
    assert server.statistics().handshake_failures["proxy_header"] == 0
