"""Running a server as a process: logging set-up and signal-driven graceful shutdown."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import trio

from ._config import ServerConfig
from ._errors import BindError, ConfigError, lone_exception
from ._handlers import Handler
from ._server import Server, serve
from ._systemd import notify
from .diagnostics import serve_control

logger = logging.getLogger("triosrv")

#: Set by a ``--workers`` supervisor in each worker's environment: its own pid.
SUPERVISOR_PID_ENV = "TRIOSRV_SUPERVISOR_PID"
#: Signals that start the graceful drain (a second one cancels at once). SIGQUIT is
#: Ctrl-\ (nginx's graceful stop); SIGHUP is a closed terminal, or a reload request
#: that only a supervisor (``--workers``) can carry out.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)
#: Signals that log one line of statistics and change nothing.
INFO_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
HANDLED_SIGNALS = STOP_SIGNALS + INFO_SIGNALS
#: How often a worker checks that its supervisor still runs (real seconds).
SUPERVISOR_CHECK_INTERVAL = 0.5


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


async def serve_until_signalled(
    handler: Handler,
    config: ServerConfig,
    *,
    control: str | None = None,
    metrics: str | None = None,
    announce: bool = True,
) -> Server:
    """Serve until SIGINT/SIGTERM; the first starts the graceful drain, a second
    cancels at once. Returns the stopped server (for its statistics).

    ``announce=False`` (a worker of the master, whose sockets the master announced)
    logs the ``listening on`` lines at debug level only.

    ``control`` is a Unix socket path for the control endpoint (``triosrv status``),
    ``metrics`` a ``HOST:PORT`` for Prometheus; both run in the server's nursery and
    stop with it.

    Raises :class:`~triosrv.BindError` if a bind fails, :class:`~triosrv.ConfigError`
    if the TLS files cannot be loaded. Sends ``READY=1`` once serving and
    ``STOPPING=1`` on the first signal to ``NOTIFY_SOCKET``, when set (sd_notify).

    A worker of ``--workers`` (:data:`SUPERVISOR_PID_ENV` is set) also drains and
    exits, as on SIGTERM, once its supervisor is gone (killed with SIGKILL, say, so it
    could not stop its workers): a worker must not serve on unsupervised.
    """
    with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
        try:
            async with trio.open_nursery() as nursery:
                server: Server = await nursery.start(serve, handler, config)
                for address in server.addresses:
                    logger.log(
                        logging.INFO if announce else logging.DEBUG, "listening on %s", address
                    )
                await _start_diagnostics(nursery, server, control, metrics, announce)
                notify("READY=1")  # systemd (Type=notify) or a worker supervisor
                nursery.start_soon(_watch_signals, signals, server, nursery.cancel_scope)
                supervisor = os.environ.get(SUPERVISOR_PID_ENV, "")
                if supervisor.isdigit():
                    nursery.start_soon(_watch_supervisor, int(supervisor), server)
                await server.wait_closed()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A bind that fails, or a TLS file that cannot be loaded: one line, no group.
            lone = lone_exception(group, BindError) or lone_exception(group, ConfigError)
            if lone is None:
                raise
            raise lone from None
    stats = server.statistics()
    logger.info(
        "stopped: %d connection(s) served, %d rejected, %d handler error(s)",
        stats.completed,
        stats.rejected,
        stats.handler_errors,
    )
    return server


async def _start_diagnostics(
    nursery: trio.Nursery,
    server: Server,
    control: str | None,
    metrics: str | None,
    announce: bool = True,
) -> None:
    if control is not None:
        address = await nursery.start(
            serve_control, server, control, name=f"triosrv control endpoint unix:{control}"
        )
        logger.log(logging.INFO if announce else logging.DEBUG, "control socket on %s", address)
    if metrics is not None:
        from .diagnostics._metrics import serve_metrics  # the optional extra

        url = await nursery.start(serve_metrics, server, metrics, name="triosrv metrics endpoint")
        logger.info("metrics on %s", url)


async def _watch_signals(
    signals: trio.abc.ReceiveChannel[int] | object, server: Server, scope: trio.CancelScope
) -> None:
    assert hasattr(signals, "__aiter__")
    count = 0
    supervised = os.environ.get(SUPERVISOR_PID_ENV, "").isdigit()
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum in INFO_SIGNALS:
            _log_statistics(server, name)
            continue
        if signum == signal.SIGHUP and supervised:
            # A terminal that closes sends SIGHUP to the whole process group; under a
            # supervisor, reloading or stopping is the supervisor's decision.
            logger.info("SIGHUP: left to the supervisor (pid %s)", os.getppid())
            continue
        count += 1
        if count == 1:
            _begin_drain(server, name)
            notify("STOPPING=1")
        else:
            logger.warning(
                "%s again: cancelling %d connection(s) now", name, server.statistics().active
            )
            scope.cancel()
            return


def _log_statistics(server: Server, name: str) -> None:
    stats = server.statistics()
    logger.info(
        "%s: %s, %d active (peak %d), %d accepted, %d completed, %d rejected, "
        "%d handler error(s), timeouts %s",
        name,
        stats.state,
        stats.active,
        stats.peak_active,
        stats.accepted,
        stats.completed,
        stats.rejected,
        stats.handler_errors,
        dict(stats.timeouts),
    )


async def _watch_supervisor(pid: int, server: Server) -> None:
    # A process whose parent dies is re-parented (to init or a subreaper), so its
    # getppid() changes. One cheap syscall per check.
    while os.getppid() == pid:
        await trio.sleep(SUPERVISOR_CHECK_INTERVAL)  # real time: a process, not a test
    _begin_drain(server, f"the supervisor (pid {pid}) is gone")


def _begin_drain(server: Server, reason: str) -> None:
    stats = server.statistics()
    # Shut down first, log after: whoever reads this line (a test, an operator's
    # script) can rely on the listeners being closed already.
    server.shutdown()
    logger.info(
        "%s: shutting down, draining %d connection(s) for up to %s s",
        reason,
        stats.active,
        "inf" if server.grace is None else f"{server.grace:g}",
    )
