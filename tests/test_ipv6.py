"""IPv6 and dual-stack binds, where the machine has IPv6 loopback."""

from __future__ import annotations

import socket

import pytest
import trio

import triosrv

from .helpers import running_server, tcp_port


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")


class PeerLine:
    async def __call__(self, conn: triosrv.Connection) -> None:
        await conn.send_all(f"{conn.peer}\n".encode())


async def peer_line(host: str, port: int) -> tuple[str, str]:
    """What the server says our address is, and what we think it is."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        ours = stream.socket.getsockname()
        data = b""
        with trio.fail_after(10):
            while not data.endswith(b"\n"):
                chunk = await stream.receive_some(100)
                assert chunk
                data += chunk
    return data.decode().strip(), f"{ours[0]}:{ours[1]}"


async def test_ipv6_loopback_bind_serves_with_bracketed_peer() -> None:
    async with running_server(PeerLine(), binds=["[::1]:0"]) as server:
        assert server.addresses[0].startswith("tcp://[::1]:")
        said, ours = await peer_line("::1", tcp_port(server))
    host, port = ours.rsplit(":", 1)
    assert said == f"[{host}]:{port}"


async def test_ipv6_any_bind_is_dual_stack() -> None:
    async with running_server(PeerLine(), binds=["[::]:0"]) as server:
        port = tcp_port(server)
        v6_said, v6_ours = await peer_line("::1", port)
        v4_said, v4_ours = await peer_line("127.0.0.1", port)
    assert v6_said == "[{}]:{}".format(*v6_ours.rsplit(":", 1))
    assert v4_said == v4_ours  # an IPv4 client is shown as IPv4, not ::ffff:127.0.0.1
