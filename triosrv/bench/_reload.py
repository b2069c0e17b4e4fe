"""``triosrv bench reload``: reloads under a churn of connections, counting every loss.

It starts ``triosrv listen --port 0`` (echo; ``--workers`` and ``--backend`` as
asked), then, at the same time:

- ``concurrency`` clients each loop: connect, send ``payload`` random bytes, read
  them back, close. Each attempt ends as ok, *failed* (the connect was refused or
  timed out), *reset* (the connection broke or closed before the whole echo) or
  *wrong* (other bytes came back);
- ``streams`` long-lived connections each echo a chunk every ``STREAM_PERIOD``
  seconds for ``stream_lifetime`` seconds (shorter than ``grace``), then close and
  are replaced. One cut before its end (reset, early EOF, a wrong echo) is *cut*.
  The first stream opened is the *sentinel*: it lives through the whole run (at most
  ``SENTINEL_SHARE`` of ``grace``: its generation is retired at the first reload and
  may keep it only that long);

and it sends SIGHUP ``reloads`` times, waiting each time until the log says the new
generation serves (or that the reload failed), ``interval`` seconds apart. It prints
the counts and the time each reload took. Loopback only; everything is bounded in
count (``reloads``) and time (``MAX_SECONDS`` per reload).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import TextIO

import attrs
import trio

from .._server_processes import BenchError

STREAM_PERIOD = 0.05
SENTINEL_SHARE = 0.9
#: The most one reload may take before the run is abandoned.
MAX_SECONDS = 60.0
EXCHANGE_TIMEOUT = 10.0
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}


@attrs.frozen(kw_only=True)
class ReloadPlan:
    """What ``bench reload`` does (see the module docstring)."""

    reloads: int = 50
    interval: float = 0.5
    concurrency: int = 8
    payload: int = 32
    streams: int = 4
    stream_lifetime: float = 2.0
    workers: int | None = None
    backend: str = "trio"
    grace: float = 120.0


@attrs.define
class ReloadCounts:
    """Everything counted in one run."""

    attempted: int = 0
    ok: int = 0
    failed: int = 0
    reset: int = 0
    wrong: int = 0
    streams: int = 0
    streams_cut: int = 0
    sentinel_cut: bool = False
    reloads_ok: int = 0
    reloads_failed: int = 0
    reload_seconds: list[float] = attrs.field(factory=list)
    seconds: float = 0.0
    pids: list[list[int]] = attrs.field(factory=list)

    @property
    def lost(self) -> int:
        """Connections that did not get their echo, and streams cut short."""
        return self.failed + self.reset + self.wrong + self.streams_cut

    @property
    def rate(self) -> float:
        """Short connections attempted per second."""
        return self.attempted / self.seconds if self.seconds else 0.0


class _Server:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def read(self) -> None:
        assert self.proc.stderr is not None
        pending = b""
        async for chunk in self.proc.stderr:
            pending += chunk
            *done, pending = pending.split(b"\n")
            self.lines += [line.decode(errors="replace") for line in done]
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, pattern: str, after: int = 0) -> re.Match[str]:
        with trio.fail_after(MAX_SECONDS):
            while True:
                for line in self.lines[after:]:
                    if match := re.search(pattern, line):
                        return match
                if self.proc.returncode is not None:
                    raise BenchError("the server exited:\n" + "\n".join(self.lines[-20:]))
                await self._changed.wait()


def server_command(plan: ReloadPlan) -> list[str]:
    """``triosrv listen`` as the plan runs it."""
    command = [sys.executable, "-m", "triosrv", "listen", "--port", "0"]
    command += ["--backend", plan.backend, "--grace", str(plan.grace), "--log-level", "info"]
    if plan.workers is not None:
        command += ["--workers", str(plan.workers)]
    return command


async def _exchange(port: int, payload: bytes, counts: ReloadCounts) -> None:
    counts.attempted += 1
    try:
        with trio.fail_after(EXCHANGE_TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
    except (OSError, trio.TooSlowError):
        counts.failed += 1
        return
    try:
        with trio.fail_after(EXCHANGE_TIMEOUT):
            await stream.send_all(payload)
            got = b""
            while len(got) < len(payload):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                got += chunk
    except (trio.BrokenResourceError, trio.TooSlowError, OSError):
        counts.reset += 1
        return
    finally:
        await trio.aclose_forcefully(stream)
    if got == payload:
        counts.ok += 1
    elif len(got) < len(payload) and payload.startswith(got):
        counts.reset += 1  # closed before the whole echo came back
    else:
        counts.wrong += 1


async def _churn(port: int, plan: ReloadPlan, counts: ReloadCounts, done: trio.Event) -> None:
    while not done.is_set():
        await _exchange(port, os.urandom(plan.payload), counts)


async def _stream(port: int, lifetime: float, counts: ReloadCounts, done: trio.Event) -> bool:
    """One long-lived connection; True if it was cut short."""
    counts.streams += 1
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        counts.streams_cut += 1
        return True
    try:
        with trio.move_on_after(lifetime):
            while not done.is_set():
                chunk = os.urandom(16)
                with trio.fail_after(EXCHANGE_TIMEOUT):
                    await stream.send_all(chunk)
                    got = b""
                    while len(got) < len(chunk):
                        part = await stream.receive_some(65536)
                        if not part:
                            raise trio.BrokenResourceError("closed early")
                        got += part
                if got != chunk:
                    raise trio.BrokenResourceError("wrong echo")
                await trio.sleep(STREAM_PERIOD)
    except (trio.BrokenResourceError, trio.TooSlowError, OSError):
        counts.streams_cut += 1
        return True
    finally:
        await trio.aclose_forcefully(stream)
    return False


async def _streams(port: int, plan: ReloadPlan, counts: ReloadCounts, done: trio.Event) -> None:
    while not done.is_set():
        await _stream(port, plan.stream_lifetime, counts, done)


async def _sentinel(port: int, grace: float, counts: ReloadCounts, done: trio.Event) -> None:
    counts.sentinel_cut = await _stream(port, grace * SENTINEL_SHARE, counts, done)


async def _reload(server: _Server, counts: ReloadCounts) -> None:
    mark = len(server.lines)
    start = trio.current_time()
    server.proc.send_signal(signal.SIGHUP)
    match = await server.wait_for(
        r"reload: generation \d+ serving \(pids ([\d ]+)\)|reload failed", mark
    )
    counts.reload_seconds.append(trio.current_time() - start)
    if match[1] is None:
        counts.reloads_failed += 1
    else:
        counts.reloads_ok += 1
        counts.pids.append([int(pid) for pid in match[1].split()])


async def run_reload_bench(
    plan: ReloadPlan, *, command: Sequence[str] | None = None
) -> ReloadCounts:
    """Run the plan against ``command`` (default :func:`server_command`); return the
    counts. The server is stopped with SIGTERM at the end (killed if it lingers).
    Raises :class:`BenchError` if the server does not start or a reload hangs."""
    proc = await trio.lowlevel.open_process(
        list(command or server_command(plan)), stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    server, counts = _Server(proc), ReloadCounts()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.read)
            port = int((await server.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)"))[1])
            done = trio.Event()
            async with trio.open_nursery() as load:
                load.start_soon(_sentinel, port, plan.grace, counts, done)
                for _ in range(plan.streams):
                    load.start_soon(_streams, port, plan, counts, done)
                for _ in range(plan.concurrency):
                    load.start_soon(_churn, port, plan, counts, done)
                start = trio.current_time()
                await trio.sleep(plan.interval)
                for _ in range(plan.reloads):
                    await _reload(server, counts)
                    await trio.sleep(plan.interval)
                counts.seconds = trio.current_time() - start
                done.set()
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(plan.grace + 10):
                await proc.wait()
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        await proc.stderr.aclose()
    return counts


def format_counts(plan: ReloadPlan, counts: ReloadCounts) -> str:
    """The result as a few lines of text."""
    times = counts.reload_seconds or [0.0]
    mode = f"--workers {plan.workers}" if plan.workers else "single process"
    return "\n".join(
        [
            f"bench reload: {mode}, backend {plan.backend}, {plan.reloads} reloads "
            f"every {plan.interval:g} s, {plan.concurrency} churning clients, "
            f"{plan.streams} streams of {plan.stream_lifetime:g} s",
            f"connects attempted {counts.attempted} ({counts.rate:.0f}/s), ok {counts.ok}, "
            f"failed {counts.failed}, reset {counts.reset}, wrong {counts.wrong}",
            f"streams {counts.streams}, cut {counts.streams_cut}, sentinel "
            f"{'cut' if counts.sentinel_cut else 'intact'}",
            f"reloads ok {counts.reloads_ok}, failed {counts.reloads_failed}; time per reload "
            f"median {statistics.median(times):.3f} s, max {max(times):.3f} s",
        ]
    )


def bench_reload(plan: ReloadPlan, *, out: TextIO) -> bool:
    """Run :func:`run_reload_bench`, print :func:`format_counts`; True if nothing was lost."""
    counts = trio.run(run_reload_bench, plan)
    print(format_counts(plan, counts), file=out)
    return counts.lost == 0 and not counts.sentinel_cut and counts.reloads_failed == 0
