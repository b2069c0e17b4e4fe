"""The PROXY header on real sockets: peer from the header, allow-list, failures, timeout."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trio
import trustme

import triosrv
from triosrv.protocols import encode_proxy_v1, encode_proxy_v2
from triosrv.testing import wait_for

from .helpers import connect, running_server


class PeerRecorder:
    """Sends ``PEER LOCAL\\n`` first, then echoes; remembers every connection."""

    def __init__(self) -> None:
        self.seen: list[triosrv.Connection] = []

    async def __call__(self, conn: triosrv.Connection) -> None:
        self.seen.append(conn)
        await conn.send_all(f"{conn.peer} {conn.local}\n".encode())
        async for chunk in conn:
            await conn.send_all(chunk)


async def receive_until(stream: trio.abc.ReceiveStream, count: int) -> bytes:
    data = b""
    with trio.fail_after(10):
        while len(data) < count:
            chunk = await stream.receive_some(1000)
            if not chunk:
                break
            data += chunk
    return data


async def closed_by_server(stream: trio.SocketStream) -> bool:
    """True once the server closed: EOF, or a reset (it closed with our bytes unread)."""
    try:
        return await receive_until(stream, 1) == b""
    except trio.BrokenResourceError:
        return True


V2_HEADER = encode_proxy_v2(("203.0.113.7", 50123), ("198.51.100.1", 443))
V1_HEADER = encode_proxy_v1(("2001:db8::7", 61000), ("2001:db8::1", 80))


@pytest.mark.parametrize(("mode", "header"), [("v2", V2_HEADER), ("auto", V1_HEADER)])
async def test_preamble_peer_comes_from_header_and_first_bytes_survive(
    mode: str, header: bytes
) -> None:
    handler = PeerRecorder()
    async with running_server(handler, proxy_protocol=mode) as server:
        stream = await connect(server)
        async with stream:
            # Header and client bytes in one segment: the reader must not eat them.
            await stream.send_all(header + b"first bytes")
            expected_line = (
                b"203.0.113.7:50123 198.51.100.1:443\n"
                if mode == "v2"
                else b"[2001:db8::7]:61000 [2001:db8::1]:80\n"
            )
            data = await receive_until(stream, len(expected_line) + 11)
    assert data == expected_line + b"first bytes"
    [conn] = handler.seen
    assert isinstance(conn, triosrv.SocketConnection)  # plain TCP keeps the fast path


async def test_preamble_header_trickled_byte_by_byte() -> None:
    async with running_server(PeerRecorder(), proxy_protocol="v1") as server:
        header = encode_proxy_v1(("192.0.2.9", 1234), ("192.0.2.1", 7))
        async with await connect(server) as stream:
            for byte in header:
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.001)  # real sleep: lets each byte arrive on its own
            await stream.send_all(b"ok")
            data = await receive_until(stream, 29)
    assert data == b"192.0.2.9:1234 192.0.2.1:7\nok"


async def test_preamble_local_command_keeps_the_real_peer() -> None:
    async with running_server(PeerRecorder(), proxy_protocol="v2") as server:
        stream = await connect(server)
        async with stream:
            await stream.send_all(encode_proxy_v2(local=True))
            line = await receive_until(stream, 10)
            client_port = stream.socket.getsockname()[1]
    assert line.startswith(f"127.0.0.1:{client_port} ".encode())


@pytest.mark.parametrize(
    ("payload", "mode"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "auto"),  # no header at all
        (encode_proxy_v1(("1.2.3.4", 1), ("5.6.7.8", 2)), "v2"),  # the wrong version
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n", "v1"),  # malformed
        (V2_HEADER[:20], "v2"),  # truncated: EOF follows
    ],
)
async def test_preamble_bad_or_missing_header_closes_and_counts(
    payload: bytes, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    handler = PeerRecorder()
    caplog.set_level(logging.INFO, logger="triosrv")
    async with running_server(handler, proxy_protocol=mode) as server:
        async with await connect(server) as stream:
            await stream.send_all(payload)
            if payload == V2_HEADER[:20]:
                await stream.send_eof()  # the header is cut short by the client's EOF
            assert await closed_by_server(stream)
        await wait_for(lambda: server.statistics().handshake_failures["proxy_header"] == 1)
    assert handler.seen == []
    assert any("bad PROXY header" in r.getMessage() for r in caplog.records)


async def test_preamble_refuses_header_from_outside_allow_list(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = PeerRecorder()
    caplog.set_level(logging.INFO, logger="triosrv")
    config = {"proxy_protocol": "v2", "proxy_allow_from": "10.0.0.0/8,192.168.0.0/16"}
    async with running_server(handler, **config) as server:
        async with await connect(server) as stream:
            await stream.send_all(V2_HEADER)
            assert await closed_by_server(stream)
        await wait_for(lambda: server.statistics().handshake_failures["proxy_refused"] == 1)
    assert handler.seen == []
    assert any("127.0.0.1 is not in proxy_allow_from" in r.getMessage() for r in caplog.records)


async def test_preamble_silent_client_is_closed_at_handshake_timeout() -> None:
    handler = PeerRecorder()
    timeouts = triosrv.Timeouts(handshake=0.3)
    async with running_server(handler, proxy_protocol="auto", timeouts=timeouts) as server:
        async with await connect(server) as stream:
            await stream.send_all(b"PROXY TCP4 ")  # starts a header, never ends it
            assert await closed_by_server(stream)
        assert server.statistics().timeouts["handshake"] == 1
    assert handler.seen == []


async def test_preamble_proxy_header_then_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    certfile = tmp_path / "server.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(certfile)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    config = {"proxy_protocol": "v2", "tls_certfile": str(certfile)}
    async with running_server(PeerRecorder(), **config) as server:
        transport = await connect(server)
        await transport.send_all(V2_HEADER)
        stream = trio.SSLStream(transport, context, server_hostname="localhost")
        async with stream:
            line = await receive_until(stream, 35)
    assert line == b"203.0.113.7:50123 198.51.100.1:443\n"


def test_preamble_allow_from_rejects_bad_networks() -> None:
    with pytest.raises(triosrv.ConfigError, match="proxy_allow_from"):
        triosrv.ServerConfig(proxy_protocol="v2", proxy_allow_from="10.0.0.0/33")
    with pytest.raises(triosrv.ConfigError, match="proxy_protocol"):
        triosrv.ServerConfig(proxy_protocol="v3")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["trio-fd", "epoll", "blocking"])
async def test_preamble_other_backends_refuse_tls_and_proxy(backend: str) -> None:
    with pytest.raises(triosrv.ConfigError, match="need backend 'trio'") as info:
        async with running_server("echo", backend=backend, proxy_protocol="v2"):
            pass  # pragma: no cover
    assert "\n" not in str(info.value)
