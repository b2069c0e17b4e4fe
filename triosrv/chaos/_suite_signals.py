"""Process-level chaos: SIGTERM under load (SIGKILL then restart: ``_suite_restart``).

**SIGTERM under load.** ``clients`` connections each keep a window of messages in
flight, every message unique (``CCCC SSSSSSSS `` then a filler and a newline), so
the echo stream can be checked line by line: nothing echoed twice, nothing skipped,
nothing corrupt. After ``load`` seconds the server gets SIGTERM; the clients go on
sending through the drain. A message whose send completed before the signal, or early
enough that its echo was due before the drain deadline (``due`` seconds before
``signal + grace``), must come back; and the process must exit with status 0 within
``grace + 1`` seconds of the signal.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable

import attrs
import trio

from .._server_processes import BenchError, ServerProcess, running_server
from ._client import describe
from ._suite_plan import Cell, ServerSpec, SuitePlan

MAX_MESSAGES = 1_000_000  # per connection
MAX_READS = 10_000_000
# Seconds, beyond grace + 1, that we wait for the process before calling it stuck.
EXIT_SLACK = 3.0
EXIT_POLL = 0.01
# Once the server is gone, how long its clients get to read the last bytes.
SETTLE = 1.0
LOG_TAIL = 1500  # characters of the server's stderr kept with a failed cell
MAX_LOG = 1 << 24
# triosrv's text log: "2026-01-02 03:04:05,678 INFO triosrv: SIGTERM: shutting down".
_LOG_LINE = re.compile(
    rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO triosrv: (SIGTERM:|stopped:)",
    re.MULTILINE,
)
_HEAD = 14  # b"CCCC SSSSSSSS "
_FILLER = bytes(range(ord("a"), ord("z") + 1))


def message(client: int, seq: int, size: int) -> bytes:
    """Message ``seq`` of connection ``client``: ``size`` bytes ending in a newline."""
    filler = _FILLER * (size // len(_FILLER) + 2)
    start = seq % len(_FILLER)
    return b"%04d %08d " % (client, seq) + filler[start : start + size - _HEAD - 1] + b"\n"


@attrs.define
class Flow:
    """One connection's messages: when each was sent, and how the echo came back."""

    index: int
    size: int
    sent_at: list[float] = attrs.field(factory=list)  # trio clock, by sequence number
    echoed: int = 0  # the next sequence number expected back
    duplicates: int = 0
    skipped: int = 0
    corrupt: int = 0
    ended: str = "running"
    ended_at: float | None = None

    def check(self, line: bytes) -> None:
        """Account for one echoed line against what was sent."""
        if line == message(self.index, self.echoed, self.size):
            self.echoed += 1
            return
        head = line[:_HEAD].split()
        seq = int(head[1]) if len(head) == 2 and head[1].isdigit() else -1
        if not 0 <= seq < len(self.sent_at) or line != message(self.index, seq, self.size):
            self.corrupt += 1
        elif seq < self.echoed:
            self.duplicates += 1
        else:
            self.skipped += seq - self.echoed
            self.echoed = seq + 1

    def lost(self, since: float, until: float) -> int:
        """Messages sent in [since, until) that never came back."""
        return sum(since <= t < until for t in self.sent_at[self.echoed :])


async def _send(stream: trio.SocketStream, flow: Flow, window: trio.Semaphore) -> None:
    for seq in range(MAX_MESSAGES):
        await window.acquire()
        try:
            await stream.send_all(message(flow.index, seq, flow.size))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the server closed the connection; the receiver says how
        flow.sent_at.append(trio.current_time())


async def _receive(stream: trio.SocketStream, flow: Flow, window: trio.Semaphore) -> str:
    buffer = bytearray()
    for _ in range(MAX_READS):
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError as exc:
            return describe(exc)
        if not data:
            return "eof"
        buffer += data
        while (end := buffer.find(b"\n")) != -1:
            flow.check(bytes(buffer[: end + 1]))
            del buffer[: end + 1]
            window.release()
    return "read limit"


async def _run_flow(port: int, flow: Flow, window: int, done: Callable[[], None]) -> None:
    try:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError as exc:
            flow.ended = f"connect: {describe(exc)}"
            return
        # No max_value: a duplicate line releases one slot too many; it is counted
        # as a duplicate, not raised.
        slots = trio.Semaphore(window)
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(_send, stream, flow, slots)
            flow.ended = await _receive(stream, flow, slots)
            nursery.cancel_scope.cancel()
    finally:
        flow.ended_at = trio.current_time()
        done()


@attrs.frozen(kw_only=True)
class SigtermFigures:
    """What SIGTERM under load saw; message counts are over all connections.

    ``lost_before``: sent before the signal, never echoed; ``lost_in_drain``: sent
    after it but early enough to be due before the drain deadline, never echoed.
    ``exit_after`` is seconds from the signal to the exit (None: not within
    ``grace + 1 + EXIT_SLACK``); ``ended`` counts how the connections ended, and
    ``ended_after_median`` is when, in seconds after the signal. ``stopped_after`` is
    from triosrv's own log: seconds from its "SIGTERM" line to its "stopped" line
    (None for other servers), which tells a slow drain from a slow process exit.
    """

    clients: int
    grace: float
    due: float
    sent: int
    echoed: int
    echoed_before: int
    lost_before: int
    lost_in_drain: int
    duplicates: int
    skipped: int
    corrupt: int
    connect_failed: int
    exit_after: float | None
    exit_status: int | None
    ended: dict[str, int]
    ended_after_median: float | None
    stopped_after: float | None = None

    def problems(self) -> list[str]:
        """Why the drain was not clean; empty when it was."""
        counts = [
            (self.connect_failed, "client(s) could not connect"),
            (self.lost_before, "message(s) sent before SIGTERM never came back"),
            (
                self.lost_in_drain,
                f"message(s) sent during the drain, over {self.due:g} s before its "
                "deadline, never came back",
            ),
            (self.duplicates, "message(s) echoed twice"),
            (self.skipped, "message(s) missing from the middle of an echo stream"),
            (self.corrupt, "echoed line(s) corrupt"),
        ]
        problems = [f"{count} {what}" for count, what in counts if count]
        if self.echoed_before == 0:
            problems.append("no echo came back before SIGTERM: there was no load to drain")
        limit = self.grace + 1
        if self.exit_after is None:
            problems.append(f"still running {limit + EXIT_SLACK:g} s after SIGTERM")
        elif self.exit_after > limit:
            logged = ""
            if self.stopped_after is not None:
                logged = f"; it logged 'stopped' {self.stopped_after:.2f} s after the signal"
            problems.append(
                f"exited {self.exit_after:.2f} s after SIGTERM "
                f"(limit: grace {self.grace:g} s + 1 s){logged}"
            )
        if self.exit_after is not None and self.exit_status != 0:
            problems.append(f"exit status {self.exit_status} after SIGTERM")
        return problems

    def figure(self) -> str:
        """The key figure for a table cell."""
        after = "-" if self.exit_after is None else f"{self.exit_after:.2f}s"
        lost = self.lost_before + self.lost_in_drain
        return f"exit {self.exit_status} {after}, {lost}/{self.sent} lost"


async def _wait_exit(server: ServerProcess, bound: float) -> float | None:
    # Seconds until the process exits, polled; None past ``bound``.
    start = trio.current_time()
    for _ in range(int(bound / EXIT_POLL) + 1):
        if server.proc.poll() is not None:
            return round(trio.current_time() - start, 3)
        await trio.sleep(EXIT_POLL)
        if trio.current_time() - start > bound:
            break
    return None


async def _sigterm_load(server: ServerProcess, plan: SuitePlan) -> SigtermFigures:
    flows = [Flow(index=i, size=plan.sigterm_size) for i in range(plan.sigterm_clients)]
    running = len(flows)
    all_ended = trio.Event()

    def done() -> None:
        nonlocal running
        running -= 1
        if running == 0:
            all_ended.set()

    async with trio.open_nursery() as nursery:
        for flow in flows:
            nursery.start_soon(_run_flow, server.port, flow, plan.sigterm_window, done)
        await trio.sleep(plan.sigterm_load)
        signalled = trio.current_time()
        echoed_before = sum(flow.echoed for flow in flows)
        server.proc.send_signal(signal.SIGTERM)
        exit_after = await _wait_exit(server, plan.sigterm_grace + 1 + EXIT_SLACK)
        with trio.move_on_after(SETTLE):  # the clients read what is left, see the end
            await all_ended.wait()
        nursery.cancel_scope.cancel()
    return _sigterm_figures(flows, plan, signalled, echoed_before, exit_after, server)


def _sigterm_figures(
    flows: list[Flow],
    plan: SuitePlan,
    signalled: float,
    echoed_before: int,
    exit_after: float | None,
    server: ServerProcess,
) -> SigtermFigures:
    due_until = signalled + plan.sigterm_grace - plan.sigterm_due
    ended = [flow.ended_at - signalled for flow in flows if flow.ended_at is not None]
    ended_after = sorted(t for t in ended if t >= 0)
    return SigtermFigures(
        clients=len(flows),
        grace=plan.sigterm_grace,
        due=plan.sigterm_due,
        sent=sum(len(flow.sent_at) for flow in flows),
        echoed=sum(flow.echoed for flow in flows),
        echoed_before=echoed_before,
        lost_before=sum(flow.lost(float("-inf"), signalled) for flow in flows),
        lost_in_drain=sum(flow.lost(signalled, due_until) for flow in flows),
        duplicates=sum(flow.duplicates for flow in flows),
        skipped=sum(flow.skipped for flow in flows),
        corrupt=sum(flow.corrupt for flow in flows),
        connect_failed=sum(flow.ended.startswith("connect") for flow in flows),
        exit_after=exit_after,
        exit_status=server.proc.poll(),
        ended=dict(Counter(flow.ended for flow in flows)),
        ended_after_median=round(ended_after[len(ended_after) // 2], 3) if ended_after else None,
    )


def sigterm_cell(spec: ServerSpec, plan: SuitePlan, *, cpu: int | None) -> Cell:
    """SIGTERM under load against a fresh server of ``spec`` (see the module)."""
    began = time.monotonic()
    cmd = spec.command(0, grace=plan.sigterm_grace)
    try:
        with running_server(spec.name, cmd, cpu) as server:
            figures = trio.run(_sigterm_load, server, plan)
            log = os.pread(server.log.fileno(), MAX_LOG, 0)
            figures = attrs.evolve(figures, stopped_after=logged_stop(log))
            problems = figures.problems()
            # What the server said as it stopped, for whoever reads a failure.
            log_tail = server.log_tail(LOG_TAIL) if problems else None
    except BenchError as exc:
        return Cell.judged(spec.name, "sigterm", "did not start", [first_line(exc)])
    return Cell.judged(
        spec.name,
        "sigterm",
        figures.figure(),
        problems,
        **attrs.asdict(figures),
        log_tail=log_tail,
        seconds=round(time.monotonic() - began, 2),
    )


def logged_stop(log: bytes) -> float | None:
    """Seconds between triosrv's "SIGTERM: shutting down" and "stopped:" log lines."""
    stamps: dict[bytes, datetime.datetime] = {}
    for match in _LOG_LINE.finditer(log):
        when = datetime.datetime.strptime(match[1].decode(), "%Y-%m-%d %H:%M:%S,%f")
        stamps.setdefault(match[2], when)
    if len(stamps) < 2:
        return None
    return round((stamps[b"stopped:"] - stamps[b"SIGTERM:"]).total_seconds(), 3)


def first_line(exc: BaseException) -> str:
    """An exception's first line, and its last when there are more (a BenchError's
    message ends with the server's stderr, whose last line is usually the reason)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1][:300]}"
