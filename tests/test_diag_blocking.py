"""The blocking-call detector: a handler that blocks the event loop is named and counted."""

from __future__ import annotations

import logging
import time

import pytest
import trio

import triosrv
from triosrv.diagnostics import BlockingDetector

from .helpers import connect, running_server


async def sleepy_echo(conn: triosrv.Connection) -> None:
    data = await conn.receive_some()
    time.sleep(0.3)  # real sleep: blocking the event loop is the behaviour under test
    await conn.send_all(data)


async def test_blocking_handler_is_named_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="triosrv")
    async with running_server(sleepy_echo, warn_blocking=0.1) as server:
        assert server.statistics().blocking_warnings == 0
        async with await connect(server) as client:
            await client.send_all(b"x")
            assert await client.receive_some() == b"x"
            peer = "{}:{}".format(*client.socket.getsockname())
        assert server.statistics().blocking_warnings == 1
    [record] = [r for r in caplog.records if "blocking" in r.getMessage()]
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert f"'triosrv connection 1 from {peer}'" in message
    assert "threshold 0.1 s" in message
    assert "sleepy_echo (test_diag_blocking.py:" in message  # where it awaited next
    held = float(message.split("held the event loop for ")[1].split(" s")[0])
    assert held >= 0.25


async def test_blocking_detector_is_removed_with_the_server() -> None:
    async with running_server(warn_blocking=0.05) as server:
        detector = server._blocking
        assert detector is not None
    time.sleep(0.1)  # real sleep: a blocking step that must no longer be watched
    await trio.lowlevel.checkpoint()
    assert detector.count == 0


async def test_blocking_off_by_default() -> None:
    async with running_server() as server:
        assert server._blocking is None
        assert server.statistics().blocking_warnings == 0


def test_blocking_config_is_validated() -> None:
    assert triosrv.ServerConfig(warn_blocking=0.5).warn_blocking == 0.5
    for bad in (0, -1, float("nan"), "1", True):
        with pytest.raises(triosrv.ConfigError, match="warn_blocking"):
            triosrv.ServerConfig(warn_blocking=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        BlockingDetector(0)
