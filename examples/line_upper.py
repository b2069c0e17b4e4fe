"""A line protocol written sans-IO, served by triosrv on any backend.

``LineUpper`` answers every complete line (ending in ``\\n``) with the line upper-cased,
and the line ``quit`` with ``bye`` and a close. It never touches a socket or a clock,
so every backend can drive it:

    PYTHONPATH=examples triosrv listen --handler line_upper:LineUpper --backend epoll

Run this file to see it served and answered (it exits when done):

    python examples/line_upper.py
"""

from __future__ import annotations

import trio

import triosrv
from triosrv.protocols import Protocol

MAX_LINE = 4096


class LineUpper(Protocol):
    """Upper-case each line; ``quit`` ends the connection; over-long lines close it."""

    def __init__(self) -> None:
        self._partial = bytearray()
        self._out = bytearray()
        self._closing = False

    @property
    def close_after_flush(self) -> bool:
        """True once the peer said ``quit``, sent EOF, or sent a line over MAX_LINE."""
        return self._closing

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Take received bytes; ``b""`` is the peer's EOF."""
        if not data:
            self._closing = True
            return
        self._partial += data
        while not self._closing and (end := self._partial.find(b"\n")) >= 0:
            line = bytes(self._partial[:end]).rstrip(b"\r")
            del self._partial[: end + 1]
            if line == b"quit":
                self._out += b"bye\n"
                self._closing = True
            else:
                self._out += line.upper() + b"\n"
        if not self._closing and len(self._partial) > MAX_LINE:
            self._out += b"error: line too long\n"
            self._closing = True

    def data_to_send(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of pending answers."""
        out = bytes(self._out[:max_bytes])
        del self._out[:max_bytes]
        return out


async def demo() -> bytes:
    """Serve LineUpper on a free loopback port, talk to it once, shut down."""
    config = triosrv.ServerConfig(binds=["127.0.0.1:0"])
    async with trio.open_nursery() as nursery:
        server = await nursery.start(triosrv.serve, triosrv.protocol_handler(LineUpper), config)
        port = int(server.addresses[0].rsplit(":", 1)[1])
        reply = b""
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(b"hello\nworld\nquit\n")
            while chunk := await client.receive_some():
                reply += chunk
        server.shutdown(grace=1)
    return reply


if __name__ == "__main__":
    print(trio.run(demo).decode(), end="")
