"""`triosrv listen` and friends as a user runs them: subprocesses, signals, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

import triosrv

from .helpers import listen_process

# The server as a user starts it: ``triosrv listen --port 0 ARGS``.
cli_server = listen_process


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triosrv", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_cli_version_matches_the_package() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert triosrv.__version__ in result.stdout


def test_cli_console_script_and_module_run_the_same_group() -> None:
    from triosrv._cli import main

    assert main.name == "main"
    assert set(main.commands) >= {"listen"}
    result = run_cli("--help")
    assert result.returncode == 0 and "listen" in result.stdout


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--idle-timeout", "soon"], "--idle-timeout"),
        (["--grace", "-1"], "--grace"),
        (["--max-connections", "0"], "--max-connections"),
        (["--overload", "drop"], "--overload"),
        (["--handler", "nonsense"], "--handler"),
        (["--bind", "nowhere"], "bind: expected HOST:PORT"),
    ],
)
def test_cli_bad_option_exits_2_naming_it(args: list[str], option: str) -> None:
    result = run_cli("listen", *args)
    assert result.returncode == 2
    assert option in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_bind_failure_is_one_line_and_exit_1() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli("listen", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: cannot bind 127.0.0.1:{port}: address already in use"


async def test_cli_listen_echoes_and_exits_0_on_sigterm() -> None:
    async with cli_server() as server:
        assert server.address.startswith("tcp://127.0.0.1:")
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            await stream.send_all(b"hello")
            assert await stream.receive_some() == b"hello"
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait_exit(5) == 0
    assert b"SIGTERM" in server.log and b"Traceback" not in server.log


async def test_cli_sigterm_drains_within_grace_then_cancels() -> None:
    """New connections refused at once, finished transfers intact, the rest cut at grace."""
    # Real time because the server is a subprocess (its clock cannot be virtual): the
    # CLI's one check that --grace reaches the drain. Bounds generous for a loaded
    # machine; the lower one is what matters (the lingering peer kept its grace).
    async with cli_server("--grace", "1") as server:
        finishing = await trio.open_tcp_stream("127.0.0.1", server.port)
        lingering = await trio.open_tcp_stream("127.0.0.1", server.port)
        await lingering.send_all(b"x")
        assert await lingering.receive_some() == b"x"
        payload = os.urandom(256 * 1024)
        await finishing.send_all(payload[:1000])
        start = trio.current_time()
        server.process.send_signal(signal.SIGTERM)
        await server.read_log_until(b"shutting down")
        with pytest.raises(OSError):  # the listener closed: refused, not queued
            await trio.open_tcp_stream("127.0.0.1", server.port)
        assert trio.current_time() - start < 2.0  # well inside the 1 s grace + 1 s
        received = bytearray()

        async def send_rest() -> None:
            await finishing.send_all(payload[1000:])
            await finishing.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_rest)
            while chunk := await finishing.receive_some():
                received += chunk
        assert received == payload  # finished inside grace: intact
        with trio.fail_after(3):
            assert await lingering.receive_some() == b""  # closed at the end of grace
        assert await server.wait_exit(3) == 0
        elapsed = trio.current_time() - start
        await finishing.aclose()
        await lingering.aclose()
    assert 0.9 < elapsed < 4.0  # grace 1 s; exit soon after (a loaded machine)
    assert b"1 connection(s) finished within grace, 1 cancelled" in server.log


async def test_cli_second_signal_cancels_at_once() -> None:
    async with (
        cli_server("--grace", "30") as server,
        await trio.open_tcp_stream("127.0.0.1", server.port) as stream,
    ):
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
        server.process.send_signal(signal.SIGINT)
        await server.read_log_until(b"shutting down")
        server.process.send_signal(signal.SIGINT)
        assert await server.wait_exit(3) == 0
    assert b"again: cancelling" in server.log


async def test_cli_loads_a_user_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "myhandlers.py").write_text(
        textwrap.dedent(
            """
            async def shout(conn):
                async for chunk in conn:
                    await conn.send_all(chunk.upper())
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    async with cli_server("--handler", "myhandlers:shout") as server:
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            await stream.send_all(b"quiet")
            assert await stream.receive_some() == b"QUIET"
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait_exit(5) == 0


async def test_cli_json_log_format() -> None:
    import json

    async with cli_server("--log-format", "json") as server:
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait_exit(5) == 0
    lines = [json.loads(line) for line in server.log.decode().splitlines() if line]
    assert lines[0]["message"].startswith("listening on tcp://127.0.0.1:")
    assert {"time", "level", "logger", "message"} <= set(lines[0])


def test_load_handler_errors_are_one_line() -> None:
    for spec, fragment in [
        ("nope", "module:callable"),
        ("no_such_module_xyz:f", "cannot import"),
        ("os:no_such_attr", "has no attribute"),
        ("os:getcwd", "neither an async function"),
    ]:
        with pytest.raises(ValueError, match=fragment) as info:
            triosrv.load_handler(spec)
        assert "\n" not in str(info.value)
