"""triosrv: a structured-concurrency TCP server toolkit on trio.

Every listener and every connection task is owned by a nursery, every timeout is a
deadline, every shutdown is bounded. Start here::

    server = await nursery.start(triosrv.serve, handler, triosrv.ServerConfig())
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._buffered import BufferedStream
from ._config import BindSpec, Limits, ServerConfig, Timeouts, parse_bind
from ._connection import Connection, SocketConnection, StreamConnection
from ._errors import (
    BindError,
    ConfigError,
    ConnectionTimeout,
    HandshakeTimeout,
    IdleTimeout,
    LifetimeTimeout,
    SlowReceiveTimeout,
    WriteTimeout,
)
from ._framed import FrameChannel
from ._handlers import load_handler, protocol_handler
from ._server import Server, ServerStatistics, serve
from ._snapshots import ConnectionSnapshot

try:
    __version__ = version("triosrv")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BindError",
    "BindSpec",
    "BufferedStream",
    "ConfigError",
    "Connection",
    "ConnectionSnapshot",
    "ConnectionTimeout",
    "FrameChannel",
    "HandshakeTimeout",
    "IdleTimeout",
    "LifetimeTimeout",
    "Limits",
    "Server",
    "ServerConfig",
    "ServerStatistics",
    "SlowReceiveTimeout",
    "SocketConnection",
    "StreamConnection",
    "Timeouts",
    "WriteTimeout",
    "load_handler",
    "parse_bind",
    "protocol_handler",
    "serve",
]
