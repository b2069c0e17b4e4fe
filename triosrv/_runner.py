"""Running a server as a process: logging set-up and signal-driven graceful shutdown."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time

import trio

from ._config import ServerConfig
from ._errors import BindError, lone_exception
from ._server import Handler, Server, serve

logger = logging.getLogger("triosrv")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send triosrv's log to stderr, as text lines or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("triosrv")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


async def serve_until_signalled(handler: Handler, config: ServerConfig) -> Server:
    """Serve until SIGINT/SIGTERM; the first starts the graceful drain, a second
    cancels at once. Returns the stopped server (for its statistics).

    Raises :class:`~triosrv.BindError` if a bind fails.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                server: Server = await nursery.start(serve, handler, config)
                for address in server.addresses:
                    logger.info("listening on %s", address)
                nursery.start_soon(_watch_signals, signals, server, nursery.cancel_scope)
                await server.wait_closed()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            bind_error = lone_exception(group, BindError)
            if bind_error is None:
                raise
            raise bind_error from None
    stats = server.statistics()
    logger.info(
        "stopped: %d connection(s) served, %d rejected, %d handler error(s)",
        stats.completed,
        stats.rejected,
        stats.handler_errors,
    )
    return server


async def _watch_signals(
    signals: trio.abc.ReceiveChannel[int] | object, server: Server, scope: trio.CancelScope
) -> None:
    assert hasattr(signals, "__aiter__")
    count = 0
    async for signum in signals:
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            stats = server.statistics()
            logger.info(
                "%s: shutting down, draining %d connection(s) for up to %s s",
                name,
                stats.active,
                "inf" if server._grace is None else f"{server._grace:g}",
            )
            server.shutdown()
        else:
            logger.warning("%s again: cancelling %d connection(s) now", name, len(server._live))
            scope.cancel()
            return
