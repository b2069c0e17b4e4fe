"""Several worker processes on one port: a supervisor that keeps them running.

Theory of operation
-------------------

``triosrv listen --workers N`` runs N copies of ``python -m triosrv listen ...
--reuse-port``. Each worker binds its *own* listening socket with SO_REUSEPORT, so
the kernel spreads new connections across them (by a hash of the addresses and
ports) and a worker that dies takes only its own queue with it.

Port 0 needs care: N workers asking for "any free port" would get N different ports.
So the supervisor picks the ports first (:func:`~triosrv._listeners.reserve_tcp_ports`):
it binds each ``HOST:0`` itself with SO_REUSEPORT, *without listening* (so no
connection is ever queued on it), keeps that socket open for as long as it runs (so
the port stays reserved for this user's SO_REUSEPORT sockets), and hands the
workers the concrete port. Inherited ``fd://N`` sockets (systemd) are passed to every
worker as they are: the workers then share one accept queue. ``unix:PATH`` cannot be
shared that way and is refused.

Readiness: the supervisor points each worker's ``NOTIFY_SOCKET`` at a datagram socket
of its own and learns which worker is ready from the ``READY=1`` the worker's runner
sends (the sender's pid comes with each message, SO_PASSCRED, as systemd does it).
When all N are ready the supervisor itself notifies its own ``NOTIFY_SOCKET``.

Elsewhere (macOS, the BSDs) neither holds: SO_REUSEPORT there lets several sockets
bind a port but hands every connection to one of them, and there is no SO_PASSCRED.
So where :func:`kernel_shards` is false the supervisor binds and listens on every TCP
bind itself and passes the listening sockets to all workers as ``fd://N``: they share
one accept queue per address (the pre-fork design of Apache and gunicorn), which no
worker's death empties. Each worker then gets a ``NOTIFY_SOCKET`` of its own, a path
in a private temporary directory, so the socket a ``READY=1`` arrives on names it.

A worker that dies is restarted after a back-off that doubles from
``backoff_initial`` to ``backoff_max`` and starts over once a worker has lived
``stable_after`` seconds. On SIGTERM (or SIGINT) the supervisor forwards SIGTERM to
every worker; each drains for ``grace`` seconds and exits; stragglers are killed
``KILL_MARGIN`` seconds after that. The exit status is 0 when every worker exited 0.
Workers run in their own process group, so a terminal's Ctrl-C reaches only the
supervisor, which forwards it once (a second signal to a worker cancels its drain).
A supervisor killed outright (SIGKILL) cannot stop its workers: each one notices that
its parent is gone (it is re-parented) within half a second, then drains and exits.
"""

from __future__ import annotations

import array
import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Literal

import attrs
import trio

from ._config import BindSpec, parse_bind
from ._errors import ConfigError
from ._listeners import open_listeners, open_notify_receiver, reserve_tcp_ports
from ._runner import SUPERVISOR_PID_ENV
from ._systemd import notify, parse_notification

logger = logging.getLogger("triosrv")

#: Seconds after ``grace`` before a worker that has not exited is killed.
KILL_MARGIN = 5.0
_UCRED = array.array("i", [0, 0, 0])  # struct ucred: pid, uid, gid


def kernel_shards() -> bool:
    """Whether each worker binds its own SO_REUSEPORT listener and the kernel spreads
    connections among them (Linux, which also names a notification's sender with
    SO_PASSCRED). False elsewhere: the workers share the supervisor's sockets."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_PASSCRED")


@attrs.define(kw_only=True)
class WorkerStatus:
    """One worker slot, as :meth:`Supervisor.status` reports it."""

    index: int
    pid: int | None = None
    state: Literal["starting", "ready", "restarting", "stopping", "stopped"] = "starting"
    restarts: int = 0
    exit_status: int | None = None


class Supervisor:
    """Runs ``workers`` processes from ``command(index)`` and keeps them running.

    Use :meth:`run` (``await nursery.start(supervisor.run)`` returns once every
    worker is ready), :meth:`stop` to drain, :meth:`status` to look.
    """

    def __init__(
        self,
        command: Callable[[int], list[str]],
        *,
        workers: int,
        grace: float | None,
        pass_fds: Sequence[int] = (),
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        stable_after: float = 10.0,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers: expected a positive integer, got {workers!r}")
        self._command = command
        self._pass_fds = tuple(pass_fds)
        self._grace = math.inf if grace is None else grace
        self._backoff = (backoff_initial, backoff_max, stable_after)
        self._slots = [WorkerStatus(index=i) for i in range(1, workers + 1)]
        self._procs: dict[int, trio.Process] = {}
        self._stopping = trio.Event()
        self._all_ready = trio.Event()
        self._failed: str | None = None

    def status(self) -> list[WorkerStatus]:
        """A copy of every worker's status, in index order."""
        return [attrs.evolve(slot) for slot in self._slots]

    def stop(self) -> None:
        """Start the drain: SIGTERM to every worker (again on each call)."""
        self._stopping.set()
        for slot in self._slots:
            if slot.state != "stopped":
                slot.state = "stopping"
        for proc in list(self._procs.values()):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Run until :meth:`stop` and every worker has exited; return the exit status.

        Raises :class:`RuntimeError` if a worker exits before it was ever ready (a
        bind error, a bad handler): restarting it would fail the same way.
        """
        with contextlib.ExitStack() as stack:
            receivers = self._open_receivers(stack)
            async with trio.open_nursery() as nursery:
                for sock, _address, owner in receivers:
                    nursery.start_soon(self._read_notifications, sock, owner)
                nursery.start_soon(self._kill_after_grace)
                # Each worker's task returns once stopping and its process exited.
                async with trio.open_nursery() as workers:
                    for i, slot in enumerate(self._slots):
                        address = receivers[i % len(receivers)][1]
                        workers.start_soon(self._keep_worker, slot, address)
                    with trio.CancelScope() as wait_ready:
                        nursery.start_soon(self._cancel_when, self._stopping, wait_ready)
                        await self._all_ready.wait()
                        task_status.started()
                nursery.cancel_scope.cancel()
        if self._failed is not None:
            raise RuntimeError(self._failed)
        ok = all(slot.exit_status == 0 for slot in self._slots)
        return 0 if ok else 1

    def _open_receivers(
        self, stack: contextlib.ExitStack
    ) -> list[tuple[socket.socket, str, WorkerStatus | None]]:
        # (socket, NOTIFY_SOCKET value, the one worker that sends there or None = any)
        if hasattr(socket, "SO_PASSCRED"):
            sock, address = open_notify_receiver()
            stack.callback(sock.close)
            return [(sock, address, None)]
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="triosrv-"))
        receivers: list[tuple[socket.socket, str, WorkerStatus | None]] = []
        for slot in self._slots:
            sock, address = open_notify_receiver(os.path.join(directory, str(slot.index)))
            stack.callback(sock.close)
            receivers.append((sock, address, slot))
        return receivers

    @staticmethod
    async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    async def _kill_after_grace(self) -> None:
        await self._stopping.wait()
        await trio.sleep(self._grace + KILL_MARGIN)
        for slot in self._slots:
            proc = self._procs.get(slot.index)
            if proc is not None and proc.returncode is None:
                logger.warning(
                    "worker %d (pid %d) did not stop in time: killing", slot.index, proc.pid
                )
                proc.kill()

    async def _keep_worker(self, slot: WorkerStatus, notify_address: str) -> None:
        initial, maximum, stable_after = self._backoff
        backoff = initial
        # The pid lets a worker notice that we are gone (see _runner.py).
        env = {**os.environ, "NOTIFY_SOCKET": notify_address, SUPERVISOR_PID_ENV: str(os.getpid())}
        while not self._stopping.is_set():
            started = trio.current_time()
            code = await self._run_worker(slot, env)
            if self._stopping.is_set():
                break
            if slot.state == "starting" and slot.restarts == 0:
                self._failed = f"worker {slot.index} {_describe(code)} before it was ready"
                logger.error("%s; stopping", self._failed)
                self.stop()
                break
            if trio.current_time() - started >= stable_after:
                backoff = initial
            logger.warning(
                "worker %d (pid %s) %s; restarting in %g s",
                slot.index,
                slot.pid,
                _describe(code),
                backoff,
            )
            slot.state, slot.restarts = "restarting", slot.restarts + 1
            with trio.move_on_after(backoff):
                await self._stopping.wait()
            backoff = min(backoff * 2, maximum)
        slot.state = "stopped"

    async def _run_worker(self, slot: WorkerStatus, env: dict[str, str]) -> int:
        proc = await trio.lowlevel.open_process(
            self._command(slot.index),
            env=env,
            pass_fds=self._pass_fds,
            process_group=0,  # Ctrl-C goes to the supervisor only
            stdin=subprocess.DEVNULL,
        )
        self._procs[slot.index] = proc
        if self._stopping.is_set():  # stop() ran while the process was being started
            proc.send_signal(signal.SIGTERM)
        slot.pid, slot.exit_status = proc.pid, None
        if slot.state != "stopping":
            slot.state = "starting"
        logger.info("worker %d started (pid %d)", slot.index, proc.pid)
        try:
            code = await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled: never leave a worker behind
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        slot.exit_status = proc.returncode
        if self._stopping.is_set():
            logger.info("worker %d (pid %d) %s", slot.index, proc.pid, _describe(code))
        return code

    async def _read_notifications(self, sock: socket.socket, owner: WorkerStatus | None) -> None:
        # Each datagram comes with the sender's credentials (SO_PASSCRED), or on a
        # socket that only ``owner`` was told about.
        space = 0 if owner is not None else socket.CMSG_SPACE(_UCRED.itemsize * len(_UCRED))
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data, ancillary, _flags, _addr = sock.recvmsg(4096, space)
            except BlockingIOError:
                continue
            pid = _sender_pid(ancillary) if owner is None else owner.pid
            slot = owner or next((s for s in self._slots if s.pid == pid), None)
            fields = parse_notification(data)
            if slot is None or fields.get("READY") != "1" or slot.state != "starting":
                continue
            slot.state = "ready"
            logger.info("worker %d ready (pid %d)", slot.index, pid)
            if not self._all_ready.is_set() and all(s.state == "ready" for s in self._slots):
                self._all_ready.set()
                logger.info("all %d workers ready", len(self._slots))
                notify("READY=1")


def _sender_pid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            creds = array.array("i")
            creds.frombytes(payload[: _UCRED.itemsize * len(_UCRED)])
            return creds[0]
    return None


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def worker_binds(
    binds: Sequence[str], *, shared: bool = False
) -> tuple[list[socket.socket], list[str], list[int]]:
    """Prepare ``binds`` for workers: reserve port-0 ports, collect inherited fds.

    Returns the reserving sockets (the caller closes them when the workers are done),
    the binds each worker uses, and the fds to pass on. With ``shared`` (where
    :func:`kernel_shards` is false) every TCP bind is bound and listened on here
    instead, and passed on as ``fd://N``. Raises :class:`~triosrv.ConfigError` for
    ``unix:PATH`` (SO_REUSEPORT is TCP only) and :class:`~triosrv.BindError` if a port
    cannot be reserved or bound.
    """
    specs = [parse_bind(b) for b in binds]
    for spec in specs:
        if spec.kind == "unix":
            raise ConfigError(
                f"binds: {spec} cannot be shared by workers (SO_REUSEPORT is TCP only); "
                "bind TCP, or pass a socket as fd://N"
            )
    inherited = [s.fd for s in specs if s.kind == "fd"]
    if shared:
        tcp = [spec for spec in specs if spec.kind == "tcp"]
        held = [listener.sock for listener in open_listeners(tcp)]
        fds = [sock.fileno() for sock in held]
        worker_list = [f"fd://{fd}" for fd in fds] + [str(s) for s in specs if s.kind == "fd"]
        return held, worker_list, fds + inherited
    held, resolved = reserve_tcp_ports(specs)
    return held, [str(spec) for spec in resolved], inherited


def listen_command(args: Sequence[str], binds: Sequence[str]) -> list[str]:
    """The command line of one worker: ``triosrv listen ARGS --reuse-port --bind ...``."""
    command = [sys.executable, "-m", "triosrv", "listen", *args, "--reuse-port"]
    for bind in binds:
        command += ["--bind", bind]
    return command


async def supervise_until_signalled(
    args: Sequence[str],
    binds: Sequence[str],
    *,
    workers: int,
    grace: float | None,
    per_worker: Callable[[int], list[str]] = lambda _index: [],
) -> int:
    """Run ``workers`` copies of ``triosrv listen ARGS`` on ``binds`` until SIGINT/SIGTERM.

    ``per_worker(index)`` adds arguments for worker ``index`` (1..N) only.

    The first signal drains every worker within ``grace`` (and tells NOTIFY_SOCKET
    ``STOPPING=1``); a second is forwarded too, which cancels the workers' drains.
    Returns the exit status (0 if every worker exited 0).
    """
    shared = not kernel_shards()
    held, worker_bind_list, fds = worker_binds(binds, shared=shared)
    try:
        supervisor = Supervisor(
            lambda index: listen_command([*args, *per_worker(index)], worker_bind_list),
            workers=workers,
            grace=grace,
            pass_fds=fds,
        )
        stop = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)
        with trio.open_signal_receiver(*stop, signal.SIGUSR1, signal.SIGUSR2) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_forward_signals, signals, supervisor)
                shown = [_tcp_display(s) for s in held] if shared else []
                shown += [_display(b) for b in worker_bind_list[len(shown) :]]
                logger.info(
                    "supervisor (pid %d): %d workers on %s%s",
                    os.getpid(),
                    workers,
                    ", ".join(shown),
                    " (sharing the supervisor's listening sockets)" if shared else "",
                )
                code = await supervisor.run()
                nursery.cancel_scope.cancel()
    finally:
        for sock in held:
            sock.close()
    logger.info("supervisor: all workers stopped, exit status %d", code)
    return code


async def _forward_signals(signals: AsyncIterator[int], supervisor: Supervisor) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum in (signal.SIGUSR1, signal.SIGUSR2):
            # The workers got it too when it was sent to the group; each logs its own
            # statistics. Sent to the supervisor alone it only says who is running.
            logger.info("%s: supervising %d worker(s)", name, len(supervisor.status()))
            continue
        logger.info("%s: stopping every worker", name)
        notify("STOPPING=1")
        supervisor.stop()


def _tcp_display(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"tcp://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"tcp://{host}:{port}"


def _display(bind: str) -> str:
    spec: BindSpec = parse_bind(bind)
    return f"tcp://{spec}" if spec.kind == "tcp" else str(spec)
