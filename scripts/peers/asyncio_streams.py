"""Peer server for scripts/bench.py: an echo server on asyncio streams.

Usage: ``python scripts/peers/asyncio_streams.py [PORT]``. Prints ``listening on
tcp://127.0.0.1:PORT`` to stderr when ready and runs until killed. The handler is the
textbook ``read`` / ``write`` / ``drain`` loop on the default event loop.
"""

from __future__ import annotations

import asyncio
import sys


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send every chunk back until the peer closes or breaks the connection."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # the peer reset the connection: nothing left to echo to
    finally:
        writer.close()


async def main(port: int) -> None:
    """Serve echo on 127.0.0.1 forever."""
    # backlog: see BACKLOG in asyncio_protocol.py.
    server = await asyncio.start_server(echo, "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on tcp://127.0.0.1:{bound}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
