"""Peer server for scripts/bench.py: an echo ``asyncio.Protocol``, optionally on uvloop.

Usage: ``python scripts/peers/asyncio_protocol.py [--uvloop] [PORT]``. Prints
``listening on tcp://127.0.0.1:PORT`` to stderr when ready and runs until killed. The
protocol writes every chunk back from ``data_received``: the fastest shape asyncio
offers (no coroutine per connection, no flow control, which an echo load that waits for
its replies never needs).
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

# asyncio's default backlog is 100: 1000 connections made at once overflow it, and the
# connects it drops come back only with the SYN retries (1 s, 3 s, 7 s later), some
# after the warm-up, into the measured windows. The bare epoll loop listens with 1024
# too; triosrv and trio.serve_tcp use the kernel's maximum (net.core.somaxconn).
BACKLOG = 1024


class Echo(asyncio.Protocol):
    """Write back whatever arrives."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def main(port: int) -> None:
    """Serve echo on 127.0.0.1 forever."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=BACKLOG)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on tcp://127.0.0.1:{bound}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def run(argv: list[str]) -> None:
    """Run on uvloop when ``--uvloop`` is given, else on asyncio's default loop."""
    use_uvloop = "--uvloop" in argv
    args = [a for a in argv if a != "--uvloop"]
    port = int(args[0]) if args else 0
    if use_uvloop:
        import uvloop  # optional extra 'peers'

        uvloop.run(main(port))
    else:
        asyncio.run(main(port))


if __name__ == "__main__":
    run(sys.argv[1:])
