"""Running a server as a process: logging set-up and signal-driven graceful shutdown."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ._config import ServerConfig
from ._errors import BindError, ConfigError, lone_exception
from ._handlers import Handler
from ._isolation import rate_limited
from ._server import Server, serve
from ._systemd import notify
from .diagnostics import serve_control

logger = logging.getLogger("triosrv")
T = TypeVar("T")

#: Set by a ``--workers`` supervisor in each worker's environment: its own pid.
SUPERVISOR_PID_ENV = "TRIOSRV_SUPERVISOR_PID"
#: Signals that start the graceful drain (a second one cancels at once). SIGQUIT is
#: Ctrl-\ (nginx's graceful stop); SIGXCPU is the soft CPU-time limit, whose hard
#: limit (SIGKILL) follows: better drained now than killed then.
DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGXCPU)
#: In a plain server also a drain (a closed terminal); the master reloads on it, and
#: a worker leaves it to the master.
STOP_SIGNALS = (*DRAIN_SIGNALS, signal.SIGHUP)
#: Signals that log one line of statistics and change nothing.
INFO_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
#: Signals whose default action ends a process at once and that nobody sends to stop
#: a server (timers, profilers, async I/O, file-size limits, power events, the
#: real-time range): one rate-limited log line each, and nothing else. SIGKILL and
#: SIGSTOP cannot be caught; the fault signals (SIGSEGV, SIGBUS, ...) mean a broken
#: process and keep their default.
IGNORED_SIGNALS = tuple(
    sorted(
        {
            getattr(signal, name)
            for name in ("SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR", "SIGSTKFLT")
            if hasattr(signal, name)
        }
        | set(range(getattr(signal, "SIGRTMIN", 0), getattr(signal, "SIGRTMAX", -1) + 1))
        | ({signal.SIGXFSZ} if hasattr(signal, "SIGXFSZ") else set())
    )
)
HANDLED_SIGNALS = STOP_SIGNALS + INFO_SIGNALS + IGNORED_SIGNALS
# Signals that came while no watcher listened (before the server was up): handed to
# the first watcher. See run_main().
_early: list[int] = []
#: How often a worker checks that its supervisor still runs (real seconds).
SUPERVISOR_CHECK_INTERVAL = 0.5


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, ``SIGRTMIN+3`` for a real-time signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        base = getattr(signal, "SIGRTMIN", 0)
        return f"SIGRTMIN+{signum - base}" if signum > base else f"signal {signum}"


def run_main(async_fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """``trio.run(async_fn, *args)`` as a serving process's main: ``triosrv listen`` and
    each ``--workers`` worker.

    Around the run, every handled signal is caught by a handler that only remembers
    it. One that comes before the server listens is handed to the signal watcher as
    soon as it starts (a SIGTERM during start-up stops the server right after it
    starts, draining nothing); one that comes after the drain finished is ignored
    while the process exits, so its exit status is the drain's (0), not a signal's
    (143) or a KeyboardInterrupt's traceback. When the run returns, those signals are
    ignored (``SIG_IGN``) for the rest of the exit: call this only as a process's
    last act.
    """
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, _remember)
    try:
        return trio.run(async_fn, *args)
    finally:
        # Python's finalization puts SIG_DFL back wherever a Python function handles
        # a signal (but leaves SIG_IGN): ignore them for the last steps of the exit.
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def _remember(signum: int, frame: object) -> None:
    _early.append(signum)


def early_signals() -> list[int]:
    """The signals :func:`run_main` remembered while no watcher listened (and forget
    them): a watcher acts on these first."""
    taken = _early[:]
    _early.clear()
    return taken


def log_ignored_signal(name: str) -> None:
    """One line (rate limited) for a signal in :data:`IGNORED_SIGNALS`."""
    logger.warning(
        "%s: ignored (SIGTERM, SIGINT or SIGQUIT stop the server)",
        name,
        extra=rate_limited("signal_ignored"),
    )


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
    act = _SignalActions(server, scope)
    for signum in early_signals():  # came while the server was starting
        if act(signum):
            return
    async for signum in signals:
        if act(signum):
            return


class _SignalActions:
    """What a plain server (or a worker) does on each signal; True once done."""

    def __init__(self, server: Server, scope: trio.CancelScope) -> None:
        self.server = server
        self.scope = scope
        self.count = 0
        self.supervised = os.environ.get(SUPERVISOR_PID_ENV, "").isdigit()

    def __call__(self, signum: int) -> bool:
        name = signal_name(signum)
        if signum in IGNORED_SIGNALS:
            log_ignored_signal(name)
        elif signum in INFO_SIGNALS:
            _log_statistics(self.server, name)
        elif signum == signal.SIGHUP and self.supervised:
            # A terminal that closes sends SIGHUP to the whole process group; under a
            # supervisor, reloading or stopping is the supervisor's decision.
            logger.info("SIGHUP: left to the supervisor (pid %s)", os.getppid())
        else:
            self.count += 1
            if self.count == 1:
                _begin_drain(self.server, name)
                notify("STOPPING=1")
            else:
                logger.warning(
                    "%s again: cancelling %d connection(s) now",
                    name,
                    self.server.statistics().active,
                )
                self.scope.cancel()
                return True
        return False


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
