"""The canary in a process of its own, so the attack's work cannot slow it down.

In the attacking process the canary would share one event loop (and one GIL) with
thousands of attack tasks; a churn attack alone keeps that loop busy, and the canary's
latency would then measure the attacker. In its own process it is scheduled by the
kernel like any other client.

The protocol on the pipes is three lines. The child prints ``ready`` once connected
(or ``error WHY`` and exits 1); the parent writes ``stop`` (or just closes stdin); the
child prints its :class:`CanaryLog` as one JSON line and exits 0.

The child is ``python -m triosrv.chaos._canary_main HOST:PORT --expect echo --stall 1``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import trio

from ._canary import CanaryLog
from ._config import Target

CHILD = "triosrv.chaos._canary_main"
START_TIMEOUT = 10.0  # interpreter start, imports, connect
STOP_TIMEOUT = 10.0
MAX_OUTPUT = 64 * 1024 * 1024


class CanaryError(Exception):
    """The canary could not start: the target refused it, or the process failed."""


class CanaryHandle:
    """The running canary; ``log`` is filled in when its context manager exits."""

    def __init__(self) -> None:
        self.log = CanaryLog()


@contextlib.asynccontextmanager
async def open_canary(target: Target, *, expect: str, stall: float) -> AsyncIterator[CanaryHandle]:
    """Start a canary process against ``target``; yields once it is connected.

    On exit the canary is stopped and its log collected into the handle. Raises
    :class:`CanaryError` when it cannot connect. The process is killed (by its pid)
    and reaped whatever happens.
    """
    command = [sys.executable, "-m", CHILD, str(target), "--expect", expect, "--stall", str(stall)]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    handle = CanaryHandle()
    output = bytearray()
    try:
        with trio.fail_after(START_TIMEOUT):
            first = await _read_line(process.stdout, output)
        if first != b"ready":
            why = first.decode(errors="replace").removeprefix("error ").strip()
            raise CanaryError(f"could not connect: {why}")
        yield handle
        try:
            await process.stdin.send_all(b"stop\n")
            with trio.fail_after(STOP_TIMEOUT):
                while len(output) < MAX_OUTPUT and (chunk := await process.stdout.receive_some()):
                    output += chunk
            handle.log = CanaryLog.from_dict(json.loads(output))
        except (trio.BrokenResourceError, trio.TooSlowError, ValueError, KeyError) as exc:
            raise CanaryError(f"the canary process failed: {exc!r}") from exc
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdin.aclose()
            await process.stdout.aclose()


async def _read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    # One line from the child; what follows it stays in ``buffer``.
    while b"\n" not in buffer:
        chunk = await stream.receive_some()
        if not chunk:
            raise CanaryError("the canary process exited before it was ready")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line
