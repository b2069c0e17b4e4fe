"""Peer server for scripts/bench.py: an echo server on anyio, running on trio.

Usage: ``python scripts/peers/anyio_trio.py [PORT]``. Prints ``listening on
tcp://127.0.0.1:PORT`` to stderr when ready and runs until killed. The handler is
anyio's documented echo loop; a peer that resets ends only its own connection.
"""

from __future__ import annotations

import sys

import anyio
from anyio.abc import SocketStream


async def echo(stream: SocketStream) -> None:
    """Send every chunk back until the peer closes or breaks the connection."""
    async with stream:
        try:
            async for data in stream:
                await stream.send(data)
        except (anyio.BrokenResourceError, anyio.EndOfStream):
            pass  # the peer went away: nothing left to echo to


async def main(port: int) -> None:
    """Serve echo on 127.0.0.1 until cancelled."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    print(f"listening on tcp://127.0.0.1:{bound}", file=sys.stderr, flush=True)
    await listener.serve(echo)


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 0, backend="trio")
