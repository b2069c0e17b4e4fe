"""Helpers for the diagnostics tests: a server with its control endpoint, short
socket paths, and the triosrv CLI as a subprocess."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import trio

import triosrv
from triosrv.diagnostics import serve_control

from .helpers import ListenProcess, listen_process, running_server

TRIOSRV = [sys.executable, "-m", "triosrv"]


@contextlib.contextmanager
def short_socket_path(name: str = "control.sock") -> Iterator[str]:
    """A Unix socket path short enough for sun_path (108 bytes), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="triosrv-") as directory:
        yield f"{directory}/{name}"


@contextlib.asynccontextmanager
async def server_with_control(
    handler: Any = "echo", **config: Any
) -> AsyncIterator[tuple[triosrv.Server, str]]:
    """A running server on loopback and its control endpoint; both stop on exit."""
    with short_socket_path() as path:
        async with running_server(handler, **config) as server, trio.open_nursery() as nursery:
            await nursery.start(serve_control, server, path)
            yield server, path
            nursery.cancel_scope.cancel()


async def run_triosrv(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run ``triosrv ARGS`` to completion without blocking the trio loop."""
    with trio.fail_after(30):
        result = await trio.run_process(
            [*TRIOSRV, *args], capture_stdout=True, capture_stderr=True, check=False
        )
    if check and result.returncode != 0:
        raise AssertionError(f"triosrv {args} exited {result.returncode}: {result.stderr!r}")
    return result


async def triosrv_json(*args: str) -> Any:
    """Run ``triosrv ARGS --json`` and parse what it printed."""
    return json.loads((await run_triosrv(*args, "--json")).stdout)


class LiveServer(ListenProcess):
    """A ``triosrv listen --control PATH`` subprocess; ``control`` is that path."""

    control = ""


@contextlib.asynccontextmanager
async def live_server(*args: str) -> AsyncIterator[LiveServer]:
    """``triosrv listen --port 0 --control PATH ARGS``, ready; killed by PID on exit."""
    with short_socket_path() as control:
        async with listen_process(
            "--control", control, *args, ready=b"control socket on unix:", server_type=LiveServer
        ) as server:
            assert isinstance(server, LiveServer)
            server.control = control
            yield server
