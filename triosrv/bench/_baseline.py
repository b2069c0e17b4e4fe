"""The baseline of the benchmarks: a plain `trio.serve_tcp` echo server on 127.0.0.1.

Usage: ``python -m triosrv.bench._baseline [PORT]`` (default 0: a free port), the
command ``triosrv._server_processes.baseline_cmd()`` returns (nothing in the package
imports this module, so ``-m`` runs it cleanly); ``triosrv bench backends`` and ``scripts/bench.py``
measure it as ``trio.serve_tcp``. When it
is ready it prints ``listening on tcp://127.0.0.1:PORT`` to stderr, the line ``triosrv
listen`` prints, so the same code starts either server. It runs until killed (SIGTERM or
SIGINT).

The handler is the textbook loop. Its one addition is that a connection the peer breaks
(a reset when a load generator closes with echoes still unread) ends only that
connection: with plain `trio.serve_tcp` the handler's exception would stop the whole
server. The ``try`` sits outside the loop, so it costs nothing per message.
"""

from __future__ import annotations

import functools
import sys

import trio


async def echo(stream: trio.SocketStream) -> None:
    """Send every chunk back until the peer closes or breaks the connection."""
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the peer reset the connection: nothing left to echo to


async def main(port: int) -> None:
    """Serve the echo handler on 127.0.0.1 until cancelled."""
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, host="127.0.0.1")
        listeners = await nursery.start(serve, echo, port)
        bound = listeners[0].socket.getsockname()[1]
        print(f"listening on tcp://127.0.0.1:{bound}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 0)
