"""The started process: it owns the listening sockets and runs generations of servers.

Theory of operation
-------------------

``triosrv listen`` runs a :class:`Master`. It binds every listening socket once and
holds it until it exits, so the addresses (port 0 included) never change and no
accept queue is ever closed while it runs. The serving is done by one *generation*
at a time:

- generation 1 of a single-process server is a :class:`LocalGeneration`: the server
  runs in the master's own process, on duplicates of its sockets, exactly as it
  always has (same pid, same speed, same log);
- generation 1 with ``--workers N``, and every generation a reload starts, is a
  :class:`~triosrv._workers.ProcessGeneration` of N worker processes (one without
  ``--workers``) that inherit the sockets. A new process imports the handler afresh.

A reload (SIGHUP, or ``triosrv status --control PATH --reload``) re-reads the config
file, lays the command line's options over it again, and starts the next generation
beside the current one. Only once it is ready does the current one stop accepting and
drain within its ``grace``; the queue they share never closes, so a connect is never
refused or reset. If anything fails first (a bad file, a handler that does not
import, a worker that dies at start) the new generation is stopped, the current one
keeps serving, one line is logged and ``status`` shows the attempt. The master's pid
never changes (systemd's MainPID, ``kill -HUP $(cat pidfile)``). With
``NOTIFY_SOCKET`` it sends ``RELOADING=1`` and ``MONOTONIC_USEC`` when a reload
starts and ``READY=1`` when it is over, as systemd's ``Type=notify-reload`` expects.

SIGINT/SIGTERM stop: the master closes its sockets and every generation drains within
``grace`` (a second signal cancels the drains). The exit status is 0 when every
generation stopped cleanly.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import trio

from ._config import ServerConfig
from ._errors import BindError, ConfigError, lone_exception
from ._listeners import Listener, open_listeners
from ._options import effective_options, server_config
from ._runner import (
    HANDLED_SIGNALS,
    IGNORED_SIGNALS,
    INFO_SIGNALS,
    _begin_drain,
    _log_statistics,
    configure_logging,
    early_signals,
    log_ignored_signal,
    signal_name,
)
from ._server import Handler, Server, serve
from ._systemd import notify
from ._workers import Backoff, GenerationFailed, ProcessGeneration, WorkerState, WorkerStatus

logger = logging.getLogger("triosrv")

#: Options a reload cannot change: the master's sockets and endpoints stay as bound.
FIXED_ON_RELOAD = ("bind", "host", "port", "systemd", "backlog", "reuse-port", "control", "metrics")
#: Seconds a reload waits for the old generation's workers to stop accepting.
RETIRE_TIMEOUT = 5.0
#: How many reload attempts ``status`` remembers.
RELOAD_HISTORY = 20


class LocalGeneration:
    """Generation 1 of a single-process server, served inside the master's process."""

    kind = "local"

    def __init__(self, number: int, handler: Handler, config: ServerConfig) -> None:
        self.number = number
        self.state: Literal["starting", "serving", "draining", "stopped", "failed"] = "starting"
        self.started_wall = time.time()
        self.config = config
        self.server: Server | None = None
        self._handler = handler
        self._scope = trio.CancelScope()

    def status(self) -> list[WorkerStatus]:
        """This process as the generation's one worker."""
        state: WorkerState = "stopping"
        if self.state in ("starting", "stopped"):
            state = "starting" if self.state == "starting" else "stopped"
        elif self.state == "serving":
            state = "ready"
        return [WorkerStatus(index=1, pid=os.getpid(), state=state)]

    def stop(self, grace: float | None = None, *, reason: str = "reload") -> None:
        """Drain the server within ``grace`` (default: its own)."""
        if self.server is None:
            self._scope.cancel()
            return
        self.state = "draining"
        if self.server.state in ("starting", "serving"):
            if grace is not None:
                self.server.shutdown(grace)
            _begin_drain(self.server, reason)
        elif grace is not None:
            self.server.shutdown(grace)

    async def wait_not_accepting(self, timeout: float) -> bool:
        """After :meth:`stop`: True; the server closed its listeners when it was told."""
        await trio.lowlevel.checkpoint()
        return True

    def cancel(self, reason: str) -> None:
        """Cancel every connection now (a second stop signal)."""
        count = 0 if self.server is None else self.server.statistics().active
        logger.warning("%s again: cancelling %d connection(s) now", reason, count)
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Serve until stopped; ``started`` once serving. Returns 0."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                self.server = await nursery.start(serve, self._handler, self.config)
                self.state = "serving"
                task_status.started()
        self.state = "stopped"
        if self.server is not None:
            stats = self.server.statistics()
            logger.info(
                "stopped: %d connection(s) served, %d rejected, %d handler error(s)",
                stats.completed,
                stats.rejected,
                stats.handler_errors,
            )
        return 0


Generation = LocalGeneration | ProcessGeneration


@attrs.frozen(kw_only=True)
class ReloadAttempt:
    """One reload, as ``status`` shows it: which generation, when, and the outcome."""

    generation: int
    time: str
    ok: bool
    reason: str | None = None


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Master:
    """The started process (see the module docstring).

    ``given`` are the options set on the command line, ``config_file`` the TOML file
    (re-read on every reload), ``options`` the effective options and ``config`` and
    ``handler`` what they describe, checked already. Run it with :meth:`run`.
    """

    def __init__(
        self,
        given: Mapping[str, Any],
        config_file: str | None,
        options: Mapping[str, Any],
        config: ServerConfig,
        handler: Handler,
    ) -> None:
        self.given = dict(given)
        self.config_file = config_file
        self.options = dict(options)
        self.config = config
        self._handler = handler
        self.listeners: list[Listener] = []
        self.generations: list[Generation] = []
        self.current: Generation | None = None
        self.reloads: list[ReloadAttempt] = []
        self.state: Literal["starting", "serving", "draining", "closed"] = "starting"
        self.started_at = 0.0
        self.started_wall = time.time()
        self.rundir = ""
        self._next_number = 1
        self._nursery: trio.Nursery | None = None
        self._reload_lock = trio.Lock()
        self._reload_again = False
        self._stop_count = 0
        self._exit_codes: list[int] = []
        self._all_stopped = trio.Event()
        self.backoff = Backoff()

    @property
    def addresses(self) -> list[str]:
        """The listening addresses, as the master bound them."""
        return [listener.address for listener in self.listeners]

    async def run(self, *, task_status: trio.TaskStatus[Master] = trio.TASK_STATUS_IGNORED) -> int:
        """Bind, serve generation 1, reload on SIGHUP, stop on SIGINT/SIGTERM.

        Returns the exit status. Raises :class:`~triosrv.BindError` if a bind fails
        and :class:`~triosrv._workers.GenerationFailed` if generation 1 cannot start.
        """
        config = self.config
        self.listeners = open_listeners(
            config.bind_specs,
            backlog=config.backlog,
            unix_mode=config.unix_mode,
            reuse_port=config.reuse_port,
        )
        self.rundir = tempfile.mkdtemp(prefix="triosrv-")
        try:
            # The runner's: DRAIN_SIGNALS stop, SIGHUP reloads, INFO_SIGNALS log the
            # generations, IGNORED_SIGNALS get one line.
            with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
                try:
                    return await self._serve(signals, task_status)
                except BaseExceptionGroup as group:
                    # A control or metrics endpoint that cannot bind, a generation that
                    # cannot start: one line, no group.
                    for kind in (BindError, ConfigError, GenerationFailed):
                        lone = lone_exception(group, kind)
                        if lone is not None:
                            raise lone from None
                    raise
        finally:
            for listener in self.listeners:
                listener.close()
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.state = "closed"

    async def _serve(self, signals: Any, task_status: trio.TaskStatus[Master]) -> int:
        from ._master_status import start_endpoints  # the control and metrics endpoints

        if self.options.get("metrics") is not None:
            # Imported before anything serves: an import inside the run would hold
            # the event loop (and trip --warn-blocking) while connections wait.
            from .diagnostics import _metrics  # noqa: F401

        self.started_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            first = self._first_generation()
            await nursery.start(self._run_generation, first)
            self.current = first
            self.state = "serving"
            for address in self.addresses:
                logger.info("listening on %s", address)
            await start_endpoints(nursery, self)
            notify("READY=1")  # systemd (Type=notify / notify-reload)
            nursery.start_soon(self._watch_signals, signals)
            task_status.started(self)
            await self._all_stopped.wait()
            nursery.cancel_scope.cancel()
        code = max(self._exit_codes, default=0)
        if not isinstance(self.current, LocalGeneration):
            logger.info("supervisor: all workers stopped, exit status %d", code)
        return code

    def _first_generation(self) -> Generation:
        workers = self.options.get("workers")
        if workers is None:
            # The server in this process takes the sockets over, as a plain server
            # owns its listeners (one fd each, as before there were reloads); the
            # first reload takes copies back before it retires this generation.
            fds = [listener.sock.detach() for listener in self.listeners]
            local = attrs.evolve(self.config, binds=[f"fd://{fd}" for fd in fds])
            return LocalGeneration(self._take_number(), self._handler, local)
        logger.info(
            "supervisor (pid %d): %d workers on %s (sharing its listening sockets)",
            os.getpid(),
            workers,
            ", ".join(self.addresses),
        )
        return self._process_generation(self.options, self.config)

    def _fds(self) -> list[int]:
        """Our listening fds, taken back from a generation served in this process."""
        local = self.current if isinstance(self.current, LocalGeneration) else None
        for i, listener in enumerate(self.listeners):
            if listener.sock.fileno() == -1 and local is not None and local.server is not None:
                # The local server's listeners are the fd:// binds, in our order.
                served = local.server.listening_sockets[i]
                if served.fileno() == -1:
                    raise GenerationFailed("the listening sockets are closed already")
                listener.sock = socket.socket(fileno=os.dup(served.fileno()))
        return [listener.sock.fileno() for listener in self.listeners]

    def _take_number(self) -> int:
        number, self._next_number = self._next_number, self._next_number + 1
        return number

    def _process_generation(
        self, options: Mapping[str, Any], config: ServerConfig
    ) -> ProcessGeneration:
        generation = ProcessGeneration(
            self._take_number(),
            options,
            fds=self._fds(),
            workers=options.get("workers") or 1,
            grace=config.timeouts.grace,
            rundir=self.rundir,
            backoff=self.backoff,
        )
        return generation

    async def _run_generation(
        self, generation: Generation, *, task_status: trio.TaskStatus[None]
    ) -> None:
        self.generations.append(generation)
        try:
            code = await generation.run(task_status=task_status)
        finally:
            self.generations.remove(generation)
            if self.state == "draining" and not self.generations:
                self._all_stopped.set()
        if self.state == "draining" or generation is self.current:
            self._exit_codes.append(code)
        if generation is self.current and self.state != "draining":
            # The serving generation ended on its own (killed workers cannot be told
            # apart from a stop): nothing serves any more, so the master stops too.
            logger.error("generation %d stopped by itself; stopping", generation.number)
            self.stop("generation end")

    # -- stopping ----------------------------------------------------------------------

    def stop(self, reason: str, grace: float | None = None) -> None:
        """Close the sockets and drain every generation (a second call cancels)."""
        self._stop_count += 1
        if self._stop_count > 1:
            for generation in list(self.generations):
                if isinstance(generation, LocalGeneration):
                    generation.cancel(reason)
                else:
                    logger.warning("%s again: cancelling generation %d", reason, generation.number)
                    generation.stop(0)
            return
        self.state = "draining"
        # Our copies first: once every generation has closed its own, newcomers are
        # refused rather than queued for nobody.
        for listener in self.listeners:
            listener.close()
        notify("STOPPING=1")
        for generation in list(self.generations):
            if isinstance(generation, LocalGeneration):
                generation.stop(grace, reason=reason)
            else:
                logger.info("%s: stopping generation %d", reason, generation.number)
                generation.stop(grace, again=False)
        if not self.generations:
            self._all_stopped.set()

    async def _watch_signals(self, signals: Any) -> None:
        for signum in early_signals():  # came while generation 1 was starting
            self._on_signal(signum)
        async for signum in signals:
            self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal_name(signum)
        if signum == signal.SIGHUP:
            assert self._nursery is not None
            self._nursery.start_soon(self.reload, name)
        elif signum in INFO_SIGNALS:
            self._log_generations(name)
        elif signum in IGNORED_SIGNALS:
            log_ignored_signal(name)
        else:
            self.stop(name)

    def _log_generations(self, name: str) -> None:
        local = self.current if isinstance(self.current, LocalGeneration) else None
        if local is not None and local.server is not None:
            _log_statistics(local.server, name)  # the server in this process
            return
        logger.info(
            "%s: %s, generation %d serving; %s",
            name,
            self.state,
            0 if self.current is None else self.current.number,
            "; ".join(
                f"generation {g.number} {g.state}: pids " + " ".join(str(w.pid) for w in g.status())
                for g in self.generations
            ),
        )

    # -- reloading ---------------------------------------------------------------------

    async def reload(self, origin: str = "reload") -> ReloadAttempt | None:
        """Start the next generation and retire the current one (see the module).

        A reload asked for while one runs is folded into it: that one runs once more
        when it is over, and every caller gets the outcome of that last run. Returns
        the attempt (None only if none was recorded).
        """
        if self.state != "serving":
            return ReloadAttempt(generation=0, time=_now(), ok=False, reason="stopping")
        if self._reload_lock.locked():
            # Folded into the reload running: it runs once more (so what changed
            # since it read the file is read too), and this caller gets that outcome.
            self._reload_again = True
            async with self._reload_lock:
                return self.reloads[-1] if self.reloads else None
        async with self._reload_lock:
            attempt = await self._reload_once(origin)
            while self._reload_again and self.state == "serving":
                self._reload_again = False
                attempt = await self._reload_once(origin)
        return attempt

    async def _reload_once(self, origin: str) -> ReloadAttempt:
        notify(f"RELOADING=1\nMONOTONIC_USEC={_monotonic_usec()}")
        logger.info("%s: reloading (generation %d serving)", origin, self._serving_number())
        try:
            options = self._keep_fixed(effective_options(self.given, config_file=self.config_file))
            # Checked with the master's own binds: the sockets stay as they are.
            fixed = {"systemd": False, "host": None, "port": None, "bind": self.config.binds}
            config = server_config({**options, **fixed})
        except ConfigError as exc:
            return self._reload_failed(self._next_number, str(exc))
        assert self._nursery is not None
        number = self._next_number
        try:
            generation = self._process_generation(options, config)
            await self._nursery.start(self._run_generation, generation)
        except GenerationFailed as exc:
            return self._reload_failed(number, str(exc))
        old, self.current = self.current, generation
        self.options, self.config = dict(options), config
        configure_logging(str(options["log-level"]), str(options["log-format"]))
        if old is not None:
            old.stop()
            # "serving" is said once the new code is the only code that accepts: an
            # old worker closes its listeners when its SIGTERM is handled, a moment on.
            if not await old.wait_not_accepting(RETIRE_TIMEOUT):
                logger.warning(
                    "reload: generation %d still accepting %g s after it was told to stop",
                    old.number,
                    RETIRE_TIMEOUT,
                )
        logger.info(
            "reload: generation %d serving (pids %s); generation %s draining",
            generation.number,
            " ".join(str(w.pid) for w in generation.status()),
            "-" if old is None else old.number,
        )
        if self.state == "serving":
            notify("READY=1\nSTATUS=serving")
        return self._record(ReloadAttempt(generation=generation.number, time=_now(), ok=True))

    def _serving_number(self) -> int:
        return 0 if self.current is None else self.current.number

    def _reload_failed(self, number: int, reason: str) -> ReloadAttempt:
        logger.error(
            "reload failed, generation %d keeps serving: %s", self._serving_number(), reason
        )
        if self.state == "serving":  # not when a stop cut the reload short
            notify(f"READY=1\nSTATUS=reload failed: {reason}")
        return self._record(ReloadAttempt(generation=number, time=_now(), ok=False, reason=reason))

    def _record(self, attempt: ReloadAttempt) -> ReloadAttempt:
        self.reloads = [*self.reloads, attempt][-RELOAD_HISTORY:]
        return attempt

    def _keep_fixed(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` with the values of :data:`FIXED_ON_RELOAD` this master runs with."""
        for key in FIXED_ON_RELOAD:
            if options.get(key) != self.options.get(key):
                logger.warning("reload: %s changed, which needs a restart; kept as it was", key)
                options[key] = self.options.get(key)
        return options


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
