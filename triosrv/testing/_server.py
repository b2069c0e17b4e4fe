"""Starting a server inside a test: :func:`open_test_server`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from .._config import ServerConfig
from .._errors import lone_exception
from .._handlers import Handler, load_handler
from .._server import Server, serve
from ._leaks import check_no_leaks


@attrs.frozen
class RunningServer:
    """A server started by :func:`open_test_server`, and where to reach it.

    ``host`` and ``port`` are those of its first TCP listener (``port`` is None when
    it only listens on Unix sockets); ``address`` is the first of ``server.addresses``.
    """

    server: Server
    address: str
    host: str
    port: int | None

    async def connect(self) -> trio.SocketStream:
        """A new client connection to the first TCP listener (the caller closes it)."""
        if self.port is None:
            raise RuntimeError(f"{self.address} is not a TCP address")
        return await trio.open_tcp_stream(self.host, self.port)


def _split(address: str) -> tuple[str, int | None]:
    if not address.startswith("tcp://"):
        return "", None
    host, _, port = address[len("tcp://") :].rpartition(":")
    return host.strip("[]"), int(port)


def _config(config: ServerConfig | None, fields: dict[str, Any]) -> ServerConfig:
    if config is None:
        fields.setdefault("binds", ["127.0.0.1:0"])
        return ServerConfig(**fields)
    return attrs.evolve(config, **fields) if fields else config


@contextlib.asynccontextmanager
async def open_test_server(
    handler: Handler | str = "echo",
    config: ServerConfig | None = None,
    *,
    grace: float = 0.0,
    check_leaks: bool = True,
    **fields: Any,
) -> AsyncIterator[RunningServer]:
    """Serve ``handler`` for the duration of the block; yield where it listens.

    ``handler`` is an async function or a built-in name (``"echo"``...). The config is
    ``config`` (with ``fields`` applied by :func:`attrs.evolve`), or, without one,
    ``ServerConfig(binds=["127.0.0.1:0"], **fields)``: loopback, a free port::

        async with triosrv.testing.open_test_server("echo") as running:
            async with await running.connect() as stream:
                await stream.send_all(b"hi")
                assert await stream.receive_some() == b"hi"

    On exit the server shuts down with ``grace`` seconds of drain and is waited for.
    With ``check_leaks`` (the default), exiting normally also checks that nothing the
    block started -- fd, thread or task, the test's own client sockets included -- is
    left, and raises :class:`~triosrv.testing.LeakError` listing what is. If the block
    is cancelled, the server is cancelled with it and nothing is checked. A lone
    exception from the server or the block is raised as itself, not in a group.
    """
    cfg = _config(config, dict(fields))
    if isinstance(handler, str):
        handler = load_handler(handler)
    leak_check = check_no_leaks() if check_leaks else contextlib.nullcontext()
    with leak_check:
        try:
            async with trio.open_nursery() as nursery:
                server: Server = await nursery.start(serve, handler, cfg)
                address = server.addresses[0] if server.addresses else ""
                host, port = _split(address)
                try:
                    yield RunningServer(server=server, address=address, host=host, port=port)
                finally:
                    server.shutdown(grace=grace)
                    await server.wait_closed()
        except BaseExceptionGroup as group:
            lone = lone_exception(group, Exception)
            if lone is None:
                raise
            raise lone from None
