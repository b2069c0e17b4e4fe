"""Worker processes: one generation of them, serving sockets they inherited.

Theory of operation
-------------------

The process the operator started (the *master*, ``_master.py``) binds every listening
socket once and keeps it open for as long as it runs. A :class:`ProcessGeneration` is
N child processes (``python -m triosrv._worker``), each inheriting those sockets
(``pass_fds``) and serving them as ``fd://N`` binds: all workers of all generations
accept from the *same* kernel accept queue. A worker that stops (it drains, it is
killed, it crashes) closes only its own file descriptor; the queue belongs to the
socket, which the master still holds, so nothing queued is ever reset and the other
workers (or the next generation) take it. That is the difference from one
SO_REUSEPORT socket per worker, whose queue dies with it (see docs/howto/reload.md).

A worker's options come as JSON in its environment (:data:`WORKER_OPTIONS_ENV`): the
master's effective options with the binds replaced by the inherited fds and a private
control socket (the master asks it for statistics). Readiness: each worker slot has a
datagram socket of its own in the master's private directory, named in the worker's
``NOTIFY_SOCKET``, on which its runner sends ``READY=1`` (or ``STATUS=...`` before a
failed start). The socket a message arrives on names the worker, so this needs no
SO_PASSCRED and works on every POSIX system.

A generation is *started* when all N workers are ready. One that exits before it
was ever ready fails the whole generation (:class:`GenerationFailed`; the others are
stopped): restarting it would fail the same way, and the master keeps the previous
generation. Once started, a worker that dies is restarted after a back-off that
doubles from ``backoff_initial`` to ``backoff_max`` and starts over once a worker has
lived ``stable_after`` seconds, so a crash loop costs a restart every few seconds,
not a hot loop. :meth:`ProcessGeneration.stop` sends SIGTERM to every worker: each
closes its listeners, drains within ``grace`` and exits; stragglers are killed
``KILL_MARGIN`` seconds later. Workers run in their own process group, so a
terminal's Ctrl-C reaches only the master. A master killed outright (SIGKILL) cannot
stop its workers: each notices that its parent is gone within half a second
(``_runner.py``), then drains and exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import trio

from ._listeners import open_notify_receiver
from ._runner import SUPERVISOR_PID_ENV
from ._systemd import parse_notification

logger = logging.getLogger("triosrv")

#: Seconds after ``grace`` before a worker that has not exited is killed.
KILL_MARGIN = 5.0
#: The environment variable that carries a worker's options (JSON).
WORKER_OPTIONS_ENV = "TRIOSRV_WORKER_OPTIONS"
#: Options the master keeps for itself: a worker gets its own values for these.
MASTER_ONLY = ("bind", "host", "port", "systemd", "workers", "control", "metrics", "reuse-port")

WorkerState = Literal["starting", "ready", "restarting", "stopping", "stopped"]


class GenerationFailed(Exception):
    """A generation could not start; ``str(exc)`` is one line saying why."""


@attrs.define(kw_only=True)
class WorkerStatus:
    """One worker slot of a generation, as :meth:`ProcessGeneration.status` reports it.

    ``control`` is the worker's private control socket; ``message`` the last
    ``STATUS=`` it sent (why it could not start, say).
    """

    index: int
    pid: int | None = None
    state: WorkerState = "starting"
    restarts: int = 0
    exit_status: int | None = None
    control: str | None = None
    message: str | None = None


@attrs.define(kw_only=True)
class Backoff:
    """Restart back-off of a worker that died: seconds, doubling, reset when stable."""

    initial: float = 0.1
    maximum: float = 5.0
    stable_after: float = 10.0


def worker_options(options: Mapping[str, Any], fds: Sequence[int], control: str) -> dict[str, Any]:
    """A worker's options: the master's, serving the inherited ``fds``, with its own
    private ``control`` socket and none of the master-only options."""
    out = {k: v for k, v in options.items() if k not in MASTER_ONLY}
    out["bind"] = [f"fd://{fd}" for fd in fds]
    out["control"] = control
    return out


class ProcessGeneration:
    """Generation ``number``: ``workers`` processes serving the inherited ``fds``.

    Use :meth:`run` with ``nursery.start`` (it returns once every worker is ready, or
    raises :class:`GenerationFailed`), :meth:`stop` to drain it, :meth:`status` to
    look, :meth:`notified` to pass on what a worker sent to ``notify_address``.
    Worker control sockets go in ``rundir`` (the master's private directory).
    """

    kind = "processes"

    def __init__(
        self,
        number: int,
        options: Mapping[str, Any],
        *,
        fds: Sequence[int],
        workers: int,
        grace: float | None,
        rundir: str,
        backoff: Backoff | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.number = number
        self.state: Literal["starting", "serving", "draining", "stopped", "failed"] = "starting"
        self.started_wall = time.time()
        self.options = dict(options)
        self._fds = tuple(fds)
        self._grace = math.inf if grace is None else grace
        # The grace each worker drains within by itself (its --grace); stop() may ask
        # for less, which _kill_after_grace carries out with a second SIGTERM.
        self._workers_grace = self._grace
        self._grace_shortened = trio.Event()
        self._backoff = backoff or Backoff()
        self._start_timeout = start_timeout
        self._slots = [
            WorkerStatus(index=i, control=os.path.join(rundir, f"g{number}-w{i}.sock"))
            for i in range(1, workers + 1)
        ]
        self._procs: dict[int, trio.Process] = {}
        self._stopping = trio.Event()
        self._all_ready = trio.Event()
        self._failed: str | None = None
        self._rundir = rundir
        self._receivers: dict[int, socket.socket] = {}
        # Workers that closed their listeners (said STOPPING=1) or exited, once stopping.
        self._not_accepting: set[int] = set()
        self._none_accepting = trio.Event()

    def status(self) -> list[WorkerStatus]:
        """A copy of every worker's status, in index order."""
        return [attrs.evolve(slot) for slot in self._slots]

    def stop(self, grace: float | None = None, *, again: bool = True) -> None:
        """Start the drain: SIGTERM to every worker. Called again, it sends SIGTERM
        again (a second SIGTERM cancels a worker's drain) unless ``again`` is false.
        ``grace`` shortens the kill deadline."""
        if grace is not None and grace < self._grace:
            self._grace = grace
            self._grace_shortened.set()
        if self._stopping.is_set() and not again:
            return
        if self.state != "failed":
            self.state = "draining"
        self._stopping.set()
        for slot in self._slots:
            if slot.state != "stopped":
                slot.state = "stopping"
        for proc in list(self._procs.values()):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)

    async def wait_not_accepting(self, timeout: float) -> bool:
        """After :meth:`stop`: wait until no worker accepts any more (each closed its
        listeners, which it says with ``STOPPING=1``, or exited), at most ``timeout``
        seconds; True if none does."""
        with trio.move_on_after(timeout):
            await self._none_accepting.wait()
        return self._none_accepting.is_set()

    def _stopped_accepting(self, slot: WorkerStatus) -> None:
        self._not_accepting.add(slot.index)
        if all(s.index in self._not_accepting for s in self._slots):
            self._none_accepting.set()

    def _notified(self, slot: WorkerStatus, fields: Mapping[str, str]) -> None:
        if fields.get("STOPPING") == "1":
            self._stopped_accepting(slot)
        if "STATUS" in fields:
            slot.message = fields["STATUS"]
        if fields.get("READY") == "1" and slot.state == "starting":
            slot.state = "ready"
            logger.info(
                "generation %d: worker %d ready (pid %s)", self.number, slot.index, slot.pid
            )
            if all(s.state == "ready" for s in self._slots):
                if self.number == 1:
                    logger.info("all %d workers ready", len(self._slots))
                self._all_ready.set()

    def _poll(self, slot: WorkerStatus) -> None:
        """Take every notification waiting on ``slot``'s socket."""
        sock = self._receivers.get(slot.index)
        while sock is not None and sock.fileno() != -1:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                return
            self._notified(slot, parse_notification(data))

    async def _read_notifications(self, slot: WorkerStatus) -> None:
        sock = self._receivers[slot.index]
        while True:
            await trio.lowlevel.wait_readable(sock)
            self._poll(slot)

    def _open_receivers(self, stack: contextlib.ExitStack) -> None:
        for slot in self._slots:
            path = os.path.join(self._rundir, f"g{self.number}-w{slot.index}.notify")
            sock, _address = open_notify_receiver(path)
            stack.callback(os.unlink, path)
            stack.callback(sock.close)
            self._receivers[slot.index] = sock

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Run until :meth:`stop` and every worker has exited; return the exit status
        (0 if every worker exited 0).

        Raises :class:`GenerationFailed` (before ``started``) if a worker exits
        before it was ever ready or they are not all ready within the start timeout.
        """
        with contextlib.ExitStack() as stack:
            self._open_receivers(stack)
            return await self._run(task_status)

    async def _run(self, task_status: trio.TaskStatus[None]) -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._kill_after_grace)
            for slot in self._slots:
                nursery.start_soon(self._read_notifications, slot)
            async with trio.open_nursery() as workers:
                for slot in self._slots:
                    workers.start_soon(self._keep_worker, slot)
                with trio.move_on_after(self._start_timeout) as timer:
                    with trio.CancelScope() as wait_ready:
                        nursery.start_soon(self._cancel_when, self._stopping, wait_ready)
                        await self._all_ready.wait()
                        self.state = "serving"
                        task_status.started()
                if timer.cancelled_caught:
                    self._fail(f"not every worker was ready within {self._start_timeout:g} s")
            if not self._all_ready.is_set() and self._failed is None:
                self._failed = "stopped before every worker was ready"
            nursery.cancel_scope.cancel()
        if self._failed is not None:
            raise GenerationFailed(self._failed)
        self.state = "stopped"
        return 0 if all(slot.exit_status == 0 for slot in self._slots) else 1

    def _fail(self, reason: str) -> None:
        if self._failed is None:
            self._failed = reason
        self.state = "failed"
        self.stop(0)

    @staticmethod
    async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    async def _kill_after_grace(self) -> None:
        await self._stopping.wait()
        started = trio.current_time()
        self._grace_shortened = trio.Event()  # self._grace already says what came before
        while self.state != "failed":  # stop() may shorten the grace while we wait
            grace = self._grace
            with trio.move_on_at(started + grace):
                await self._grace_shortened.wait()
            if grace == self._grace:
                break
            self._grace_shortened = trio.Event()
        if self.state != "failed" and self._grace < self._workers_grace:
            # A worker drains within its own --grace; a shorter grace (a control
            # drain's) ends with a second SIGTERM, which cancels a worker's drain, so
            # the worker still closes its connections and exits by itself.
            for running in list(self._procs.values()):
                if running.returncode is None:
                    running.send_signal(signal.SIGTERM)
        await trio.sleep(KILL_MARGIN)
        for slot in self._slots:
            proc = self._procs.get(slot.index)
            if proc is not None and proc.returncode is None:
                logger.warning(
                    "generation %d: worker %d (pid %d) did not stop in time: killing",
                    self.number,
                    slot.index,
                    proc.pid,
                )
                proc.kill()

    async def _keep_worker(self, slot: WorkerStatus) -> None:
        backoff = self._backoff.initial
        while not self._stopping.is_set():
            started = trio.current_time()
            code = await self._run_worker(slot)
            if self._stopping.is_set():
                break
            if not self._all_ready.is_set():
                self._poll(slot)  # a STATUS= sent just before it exited
                why = f": {slot.message}" if slot.message else ""
                self._fail(f"worker {slot.index} {describe_exit(code)} before it was ready{why}")
                break
            if trio.current_time() - started >= self._backoff.stable_after:
                backoff = self._backoff.initial
            logger.warning(
                "generation %d: worker %d (pid %s) %s; restarting in %g s",
                self.number,
                slot.index,
                slot.pid,
                describe_exit(code),
                backoff,
            )
            slot.state, slot.restarts = "restarting", slot.restarts + 1
            with trio.move_on_after(backoff):
                await self._stopping.wait()
            backoff = min(backoff * 2, self._backoff.maximum)
        slot.state = "stopped"
        self._stopped_accepting(slot)

    def _environment(self, slot: WorkerStatus) -> dict[str, str]:
        assert slot.control is not None
        options = worker_options(self.options, self._fds, slot.control)
        return {
            **os.environ,
            "NOTIFY_SOCKET": os.path.join(self._rundir, f"g{self.number}-w{slot.index}.notify"),
            # The pid lets a worker notice that we are gone (see _runner.py).
            SUPERVISOR_PID_ENV: str(os.getpid()),
            WORKER_OPTIONS_ENV: json.dumps(options),
        }

    async def _run_worker(self, slot: WorkerStatus) -> int:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "triosrv._worker"],
            env=self._environment(slot),
            pass_fds=self._fds,
            process_group=0,  # Ctrl-C goes to the master only
            stdin=subprocess.DEVNULL,
        )
        self._procs[slot.index] = proc
        if self._stopping.is_set():  # stop() ran while the process was being started
            proc.send_signal(signal.SIGTERM)
        slot.pid, slot.exit_status, slot.message = proc.pid, None, None
        if slot.state != "stopping":
            slot.state = "starting"
        logger.info("generation %d: worker %d started (pid %d)", self.number, slot.index, proc.pid)
        try:
            code = await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled: never leave a worker behind
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        slot.exit_status = proc.returncode
        if self._stopping.is_set():
            logger.info(
                "generation %d: worker %d (pid %d) %s",
                self.number,
                slot.index,
                proc.pid,
                describe_exit(code),
            )
        return code


def describe_exit(code: int) -> str:
    """``exited with status N`` or ``was killed by SIGNAME``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
