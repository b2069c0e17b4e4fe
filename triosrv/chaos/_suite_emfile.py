"""EMFILE for real: a server with a handful of fds against a flood of connections.

The server runs with ``RLIMIT_NOFILE`` lowered (64 by default, set between fork and
exec), and ``flood`` clients connect at once, each sending one byte and waiting for an
answer. With few fds most cannot be served: a server that handles EMFILE well
(a reserve fd, released to accept and close the queued peers) closes them at once, so
each client is *served* or *shed* (closed or reset) quickly, and none is left hanging in
the backlog. Then the clients close, and a new connection must be served again within
``RECOVERY_LIMIT`` (the issue's 1 s). Finally SIGTERM must stop the server with status 0.

Used by the chaos suite (one cell per backend) and by ``tests/test_emfile.py``.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable

import attrs
import trio

from .._server_processes import BenchError, ServerProcess, running_server
from ._client import describe
from ._suite_plan import Cell, ServerSpec
from ._suite_signals import first_line

FD_LIMIT = 64
FLOOD = 500
# A flood client must be answered (served) or closed (shed) within this; real time,
# generous, since the machine may be loaded.
VERDICT_TIMEOUT = 10.0
RECOVERY_LIMIT = 1.0
# We keep trying this long after the limit, so that a slow recovery gets a figure.
RECOVERY_WAIT = 5.0
# Seconds between echo probes after the flood: finer than the chaos run's canary
# (CANARY_PROBE_INTERVAL), since the recovery limit here is one second.
FLOOD_PROBE_INTERVAL = 0.01
MAX_PROBES = 1000
EXIT_TIMEOUT = 15.0
ECHO_TIMEOUT = 1.0
# triosrv's own log lines for EMFILE and the shed queue (checked by tests/test_emfile.py).
EMFILE_LOG_LINES = (b"Too many open files", b"queued connection(s)")


def limit_fds(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` that lowers the child's RLIMIT_NOFILE to ``limit``."""

    def hook() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return hook


@attrs.frozen(kw_only=True)
class EmfileFigures:
    """What one EMFILE run saw.

    ``outcomes`` counts the flood's clients by fate: ``served`` (echoed), ``closed``
    (EOF), ``reset``, ``hanging`` (no answer within the verdict timeout) or the errno
    name of a failed connect. ``exit_status`` is the server's status after SIGTERM
    (None: it did not exit in time, or had already died). ``logged`` is True when the
    server's log has triosrv's EMFILE lines.
    """

    fd_limit: int
    flood: int
    outcomes: dict[str, int]
    died_during_flood: int | None
    recovered_after: float | None
    exit_status: int | None
    logged: bool

    @property
    def shed(self) -> int:
        """Flood clients the server closed or reset instead of serving."""
        return self.outcomes.get("closed", 0) + self.outcomes.get("reset", 0)

    def problems(self) -> list[str]:
        """Why this run fails the EMFILE check; empty when it passes."""
        problems = []
        served, hanging = self.outcomes.get("served", 0), self.outcomes.get("hanging", 0)
        if self.died_during_flood is not None:
            problems.append(f"the server exited during the flood (status {self.died_during_flood})")
        if hanging:
            problems.append(
                f"{hanging}/{self.flood} flood clients left hanging (neither served nor "
                f"closed within {VERDICT_TIMEOUT:g} s)"
            )
        if served == 0:
            problems.append("no flood client was served")
        if self.shed == 0:
            problems.append("no flood client was shed (closed or reset)")
        if served >= self.fd_limit:
            problems.append(f"{served} clients served at once with {self.fd_limit} fds")
        if self.recovered_after is None or self.recovered_after > RECOVERY_LIMIT:
            after = "never" if self.recovered_after is None else f"{self.recovered_after:.2f} s"
            problems.append(
                f"not served again within {RECOVERY_LIMIT:g} s after the flood ({after})"
            )
        if self.exit_status != 0:
            problems.append(f"after SIGTERM: exit status {self.exit_status}")
        return problems

    def figure(self) -> str:
        """The key figure for a table cell."""
        back = "never" if self.recovered_after is None else f"{self.recovered_after:.2f}s"
        return f"{self.outcomes.get('served', 0)} served {self.shed} shed, back {back}"


async def _flood_client(
    port: int, outcomes: Counter[str], socks: list[trio.socket.SocketType]
) -> None:
    sock = trio.socket.socket()
    socks.append(sock)
    try:
        await sock.connect(("127.0.0.1", port))
        await sock.send(b"f")
        data = await sock.recv(1)
    except OSError as exc:
        outcomes[describe(exc)] += 1  # "reset", "refused", or the errno's name
        return
    outcomes["served" if data == b"f" else "closed"] += 1


async def echo_once(port: int) -> bool:
    """One short echo exchange on a new connection; True when it came back intact."""
    with trio.move_on_after(ECHO_TIMEOUT):
        try:
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(b"canary")
                return await stream.receive_some() == b"canary"
        except (OSError, trio.BrokenResourceError):
            return False
    return False


async def _flood_and_recover(
    server: ServerProcess, flood: int
) -> tuple[Counter[str], int | None, float | None]:
    # Flood; count each client's fate; close them all; time until served again.
    socks: list[trio.socket.SocketType] = []
    outcomes: Counter[str] = Counter()
    try:
        with trio.move_on_after(VERDICT_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for _ in range(flood):
                    nursery.start_soon(_flood_client, server.port, outcomes, socks)
        outcomes["hanging"] = flood - sum(outcomes.values())
        died = server.proc.poll()
    finally:
        for sock in socks:
            sock.close()
    flood_ended = trio.current_time()
    with trio.move_on_after(RECOVERY_LIMIT + RECOVERY_WAIT):
        for _ in range(MAX_PROBES):
            if await echo_once(server.port):
                return outcomes, died, round(trio.current_time() - flood_ended, 3)
            await trio.sleep(FLOOD_PROBE_INTERVAL)  # polling a subprocess's recovery
    return outcomes, died, None


def _sigterm_status(server: ServerProcess) -> int | None:
    # SIGTERM by pid, then the exit status (None: still running after EXIT_TIMEOUT).
    if server.proc.poll() is not None:
        return None  # died earlier: reported as such, not as a clean stop
    server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None


def run_emfile(
    spec: ServerSpec,
    *,
    fd_limit: int = FD_LIMIT,
    flood: int = FLOOD,
    cpu: int | None = None,
) -> EmfileFigures:
    """Start ``spec``'s server with ``fd_limit`` fds, flood it, and return the figures.

    Raises :class:`~triosrv.bench.BenchError` when the server does not start. The
    server is stopped (SIGTERM, then SIGKILL by pid) whatever happens.
    """
    with running_server(spec.name, spec.command(0), cpu, preexec=limit_fds(fd_limit)) as server:
        outcomes, died, recovered = trio.run(_flood_and_recover, server, flood)
        status = _sigterm_status(server)
        log = os.pread(server.log.fileno(), 1 << 24, 0)
    return EmfileFigures(
        fd_limit=fd_limit,
        flood=flood,
        outcomes=dict(outcomes),
        died_during_flood=died,
        recovered_after=recovered,
        exit_status=status,
        logged=all(line in log for line in EMFILE_LOG_LINES),
    )


def emfile_cell(spec: ServerSpec, *, fd_limit: int, flood: int, cpu: int | None) -> Cell:
    """The suite's EMFILE cell for one server (a failed start is a failed cell)."""
    began = time.monotonic()
    try:
        figures = run_emfile(spec, fd_limit=fd_limit, flood=flood, cpu=cpu)
    except BenchError as exc:
        return Cell.judged(spec.name, "emfile", "did not start", [first_line(exc)])
    return Cell.judged(
        spec.name,
        "emfile",
        figures.figure(),
        figures.problems(),
        **attrs.asdict(figures),
        seconds=round(time.monotonic() - began, 2),
    )
