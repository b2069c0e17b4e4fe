"""A handler for worker tests: tells the client which process served it."""

from __future__ import annotations

import os

import triosrv


async def pid_handler(conn: triosrv.Connection) -> None:
    """Send this process's pid and a newline, then close."""
    await conn.send_all(f"{os.getpid()}\n".encode())
