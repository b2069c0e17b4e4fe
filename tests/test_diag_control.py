"""The control endpoint and ``triosrv status``: protocol, socket mode, errors, CLI."""

from __future__ import annotations

import itertools
import json
import os
import socket
import stat

import pytest
import trio
import trio.testing

from triosrv._config import BACKENDS
from triosrv.diagnostics import DiagnosticsError, control_request, render_status, watch_status
from triosrv.diagnostics._control import MAX_REQUEST

from .diag_helpers import run_triosrv, server_with_control, short_socket_path, triosrv_json
from .helpers import connect


async def raw_exchange(path: str, *lines: bytes) -> list[dict[str, object]]:
    """Send raw request lines on one connection; return one parsed answer per line."""
    answers = []
    async with await trio.open_unix_socket(path) as stream:
        buffer = bytearray()
        for line in lines:
            await stream.send_all(line)
            while b"\n" not in buffer:
                chunk = await stream.receive_some()
                assert chunk, "the endpoint closed without answering"
                buffer += chunk
            answer, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            answers.append(json.loads(answer))
    return answers


async def test_control_socket_is_mode_0600_and_removed_after() -> None:
    async with server_with_control() as (_server, path):
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not os.path.exists(path)


async def test_control_status_lists_connections_and_tasks() -> None:
    async with server_with_control() as (server, path):
        clients = [await connect(server) for _ in range(3)]
        for client in clients:
            await client.send_all(b"hi")
            assert await client.receive_some() == b"hi"
        await trio.testing.wait_all_tasks_blocked()
        doc = await control_request(path, {"cmd": "status"})
        assert doc["version"] == 1 and doc["pid"] == os.getpid()
        assert doc["state"] == "serving" and doc["addresses"] == server.addresses
        assert doc["statistics"]["active"] == 3
        assert doc["statistics"]["bytes_received"] == 6
        assert doc["config"]["limits"]["max_connections"] == 1000
        peers = ["{}:{}".format(*c.socket.getsockname()) for c in clients]
        assert [c["peer"] for c in doc["connections"]] == peers
        for conn in doc["connections"]:
            assert conn["waiting"] == "receive" and conn["next_deadline"] == "idle"
            assert 55 < conn["deadline_in"] <= 60
        text = render_status(doc)
        assert all(peer in text for peer in peers)
        assert "triosrv connection nursery" in text
        for client in clients:
            await client.aclose()


async def test_control_malformed_requests_get_errors_and_the_server_goes_on() -> None:
    async with server_with_control() as (server, path):
        answers = await raw_exchange(
            path,
            b"not json\n",
            b"[1, 2]\n",
            b'{"cmd": "reboot"}\n',
            b'{"cmd": "drain", "grace": -1}\n',
            b"\xff\xfe\n",
            b'{"cmd": "status"}\n',  # the same connection still works
        )
        assert [sorted(a) for a in answers[:5]] == [["error"]] * 5
        assert "malformed request" in str(answers[0]["error"])
        assert "status, drain" in str(answers[2]["error"])
        assert "grace" in str(answers[3]["error"])
        assert answers[5]["state"] == "serving"
        assert server.state == "serving"
        async with await connect(server) as client:
            await client.send_all(b"still serving")
            assert await client.receive_some() == b"still serving"


async def test_control_overlong_request_is_refused() -> None:
    async with server_with_control() as (server, path):
        [answer] = await raw_exchange(path, b"x" * (MAX_REQUEST + 10) + b"\n")
        assert "longer than" in str(answer["error"])
        assert server.state == "serving"


async def test_control_drain_starts_the_graceful_shutdown() -> None:
    async with server_with_control() as (server, path):
        answer = await control_request(path, {"cmd": "drain", "grace": 0})
        assert answer == {"ok": True, "state": "draining", "active": 0, "grace": 0.0}
        with trio.fail_after(5):
            await server.wait_closed()
        assert server.state == "closed"


async def test_control_missing_and_stale_sockets_are_clear_errors() -> None:
    with short_socket_path() as path:
        with pytest.raises(DiagnosticsError, match="no such socket"):
            await control_request(path, {"cmd": "status"})
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(path)  # a file nobody listens on: what a killed server leaves
        with pytest.raises(DiagnosticsError, match="nobody is listening"):
            await control_request(path, {"cmd": "status"})


async def test_control_watch_refreshes_until_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[float] = []
    async with server_with_control(binds=()) as (_server, path):
        with trio.CancelScope() as scope:

            def show(doc: dict[str, object]) -> None:
                seen.append(trio.current_time())
                if len(seen) == 3:
                    scope.cancel()

            await watch_status(path, 2.0, show)
    assert [b - a for a, b in itertools.pairwise(seen)] == pytest.approx([2.0, 2.0])


async def test_status_cli_text_and_json() -> None:
    async with server_with_control() as (server, path):
        async with await connect(server) as client:
            await client.send_all(b"x")
            assert await client.receive_some() == b"x"
            peer = "{}:{}".format(*client.socket.getsockname())
            text = (await run_triosrv("status", "--control", path)).stdout.decode()
            doc = await triosrv_json("status", "--control", path)
        assert text.startswith(f"triosrv pid {os.getpid()}: serving, up ")
        assert "STATISTIC" in text and "connections: 1" in text and peer in text
        assert f"triosrv connection 1 from {peer}" in text
        assert [c["peer"] for c in doc["connections"]] == [peer]
        assert doc["statistics"]["accepted"] == 1


async def test_status_cli_missing_socket_is_one_line_exit_1() -> None:
    with short_socket_path() as path:
        result = await run_triosrv("status", "--control", path, check=False)
    assert result.returncode == 1
    message = result.stderr.decode()
    assert message.count("\n") == 1
    assert message.startswith(f"error: cannot reach the control socket {path}: no such socket")


async def test_status_cli_drain() -> None:
    async with server_with_control() as (server, path):
        result = await run_triosrv("status", "--control", path, "--drain", "--grace", "0")
        assert result.stdout.decode().strip() == "draining 0 connection(s), grace 0 s"
        with trio.fail_after(5):
            await server.wait_closed()


async def test_status_cli_grace_needs_drain() -> None:
    with short_socket_path() as path:
        result = await run_triosrv("status", "--control", path, "--grace", "1", check=False)
    assert result.returncode == 2
    assert b"--grace goes with --drain" in result.stderr


@pytest.mark.parametrize("backend", BACKENDS)
async def test_control_status_on_every_backend(backend: str) -> None:
    async with server_with_control(backend=backend) as (server, path):
        clients = [await connect(server) for _ in range(2)]
        try:
            for client in clients:
                await client.send_all(b"x")
                assert await client.receive_some() == b"x"
            peers = ["{}:{}".format(*c.socket.getsockname()) for c in clients]
            with trio.fail_after(5):
                while True:  # a loop backend may see the echo out before it waits again
                    doc = await control_request(path, {"cmd": "status"})
                    conns = doc["connections"]
                    if all(c["waiting"] == "receive" for c in conns):
                        break
                    await trio.sleep(0.01)
            assert [c["peer"] for c in conns] == peers
            assert all(c["next_deadline"] == "idle" for c in conns)
            assert doc["statistics"]["active"] == 2
            # Task backends accept in a listener task; loop backends in their loop task.
            text = render_status(doc)
            assert f"triosrv listener {server.addresses[0]}" in text or (
                f"triosrv {backend} loop" in text
            )
        finally:
            for client in clients:
                await client.aclose()
