"""Handlers for ``triosrv bench cpu``: CPU-bound work inline, in a thread, in a process.

Served with ``triosrv listen --handler triosrv.bench._cpu_handlers:MODE``. The protocol
is one line per request: ``w<MS>\\n`` asks the server to spend ``MS`` milliseconds of
CPU (pure Python, so the GIL is held throughout) and answers ``w\\n``; any other line is
echoed at once (the canary). A client keeps one request in flight per connection.

The three handlers differ in one line, where the CPU work runs:

- ``inline`` calls it on the event loop: every other connection waits meanwhile;
- ``thread`` uses ``trio.to_thread.run_sync``: the loop stays free, but the thread
  holds the GIL, so the loop gets it back only at the interpreter's switch interval;
- ``process`` uses ``trio_parallel.run_sync`` (optional extra ``cpu``): the work runs in
  a worker process with its own GIL, the loop is free, and several CPUs can work.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from .._connection import Connection

__all__ = ["burn", "inline", "process", "thread"]

_MAX_LINE = 64


def burn(milliseconds: float) -> int:
    """Spend ``milliseconds`` of this thread's CPU time in Python bytecode; return a sum."""
    until = time.thread_time() + milliseconds / 1000.0
    total = 0
    while time.thread_time() < until:
        for i in range(2000):  # a stretch of pure bytecode between clock reads
            total += i
    return total


async def _lines(conn: Connection) -> AsyncIterator[bytes]:
    # Split the byte stream into lines; a line longer than _MAX_LINE ends the connection.
    buffer = bytearray()
    while True:
        end = buffer.find(b"\n")
        if end >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            yield line
            continue
        if len(buffer) > _MAX_LINE:
            return
        data = await conn.receive_some()
        if not data:
            return
        buffer += data


async def _serve(conn: Connection, run: Callable[[float], Awaitable[object]]) -> None:
    async for line in _lines(conn):
        if line.startswith(b"w"):
            try:
                milliseconds = float(line[1:])
            except ValueError:
                return  # not our protocol: close
            await run(min(milliseconds, 1000.0))
            await conn.send_all(b"w\n")
        else:
            await conn.send_all(line + b"\n")


async def _inline(milliseconds: float) -> None:
    burn(milliseconds)
    await trio.lowlevel.checkpoint()


async def _in_thread(milliseconds: float) -> None:
    await trio.to_thread.run_sync(burn, milliseconds)


async def _in_process(milliseconds: float) -> None:
    # optional extra "cpu", imported here so the other modes need not have it
    import trio_parallel

    await trio_parallel.run_sync(burn, milliseconds)


async def inline(conn: Connection) -> None:
    """Do the CPU work on the event loop itself (what not to do)."""
    await _serve(conn, _inline)


async def thread(conn: Connection) -> None:
    """Do the CPU work in a thread with ``trio.to_thread.run_sync``."""
    await _serve(conn, _in_thread)


async def process(conn: Connection) -> None:
    """Do the CPU work in a worker process with ``trio_parallel.run_sync``."""
    await _serve(conn, _in_process)
