"""``triosrv bench backends``: the seed's I/O-multiplexing table, measured per backend.

Theory of operation
-------------------
Each backend runs as ``triosrv listen --backend NAME`` in a process of its own, pinned to
one CPU while this process (the clients) runs on another. One server per backend
answers, in this order:

1. the readiness-wait ladder: a `ConnectionPool` grows to N idle, *served* connections
   (each proved by a one-byte echo) for N = 10, 100, 1000, 10000, and at each N one more
   connection times one-byte echo round trips. With N idle connections and one active
   the server does one readiness wait per round trip, so the median round trip grows
   with N exactly when finding the ready fd costs O(N) (select, poll, trying every fd)
   and stays flat when the kernel hands back only the ready ones (epoll, trio). At
   N = 100 the server's CPU use while every connection is idle is measured too
   (a loop that polls shows here);
2. the largest number of connections served: the pool grows further, in batches, until a
   connection is refused, closed or not echoed (select stops near FD_SETSIZE), or the cap;
3. echo throughput, p99 and the server's CPU per round trip at 1, 50 and 1000
   connections (`run_load`, the backend alone), pool closed; then, at each count, the
   backend against a plain ``trio.serve_tcp`` echo server (the baseline, pinned to the
   same CPU) in paired windows (`run_paired`, once each way round, see `swapped`): the
   median of the per-window ratios is the ``echo vs trio.serve_tcp`` row. The baseline
   is measured beside each backend, not once before them all, so slow drift of the
   machine cancels out of the ratio.

Then a second server of the same backend gets 1000 idle connections and SIGTERM with a
1 ms grace: the time until every client saw its connection closed is the cancel row.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

import attrs

from .._config import BACKENDS
from .._server_processes import (
    BASELINE,
    BenchError,
    ServerProcess,
    baseline_cmd,
    cpu_share_during,
    listen_has_backend,
    running_server,
    triosrv_listen_cmd,
)
from ._conns import ConnectionPool, ping_pong
from ._load import run_load
from ._paired import PairedResult, run_paired, swapped
from ._report import cpu_us_per_round_trip

__all__ = ["BACKENDS", "READINESS", "BackendsPlan", "measure_backend", "running_baseline"]

# How each backend finds a ready connection: (short, for the table; long, for the legend).
READINESS = {
    "trio": ("trio epoll", "a task per connection; trio's I/O manager (epoll) wakes it"),
    "trio-fd": ("trio epoll", "a task per connection on a raw fd: lowlevel.wait_readable(fd)"),
    "epoll": ("epoll_wait", "one loop; the kernel returns only the ready fds"),
    "poll": ("poll scan", "one loop; poll() passes and the kernel scans every watched fd"),
    "select": ("select scan", "one loop; select() scans fd bitmaps below FD_SETSIZE"),
    "nonblocking": ("try every fd", "one loop; recv() on every fd, a short sleep when idle"),
    "blocking": ("thread/kernel", "a thread per connection, blocked in recv()"),
}


@attrs.frozen(kw_only=True)
class BackendsPlan:
    """The sizes and times of one run; `quick` and `default` are the two presets."""

    wait_ns: tuple[int, ...] = (10, 100, 1000, 10000)
    max_cap: int = 10000
    echo_connections: tuple[int, ...] = (1, 50, 1000)
    echo_duration: float = 1.0
    echo_warmup: float = 0.3
    paired_duration: float = 2.0
    paired_window: float = 0.2
    ping_count: int = 3000
    ping_seconds: float = 0.5
    idle_seconds: float = 1.0
    idle_connections: int = 100
    cancel_connections: int = 1000
    cancel_timeout: float = 15.0

    @classmethod
    def quick(cls) -> BackendsPlan:
        """About a minute for all seven backends."""
        return cls(
            wait_ns=(10, 100, 1000),
            max_cap=1500,
            echo_duration=0.4,
            echo_warmup=0.15,
            paired_duration=1.0,
            paired_window=0.1,
            ping_count=1000,
            ping_seconds=0.2,
            idle_seconds=0.5,
        )

    def seconds_per_backend(self) -> float:
        """A rough estimate, for the progress bar."""
        paired = self.paired_duration + 2 * (self.echo_warmup + 0.5)
        echo = len(self.echo_connections) * (self.echo_duration + self.echo_warmup + 0.3 + paired)
        ladder = len(self.wait_ns) * (self.ping_seconds + 0.2) + self.max_cap / 5000
        return echo + ladder + self.idle_seconds + 2.0


def backend_cmd(name: str, *options: str, has_backend: bool) -> list[str]:
    """``triosrv listen`` for one backend, with limits out of the way of the bench."""
    base = triosrv_listen_cmd("--idle-timeout", "none", "--max-connections", "100000", *options)
    if has_backend:
        return [*base, "--backend", name]
    if name != "trio":
        raise BenchError(f"this triosrv has no --backend option, so no {name!r} backend")
    return base


def _idle_cpu(server: ServerProcess, seconds: float) -> float | None:
    # CPU share of the server while every connection it holds is idle; the sleep is
    # the measurement itself: nothing happens meanwhile, by design.
    return cpu_share_during(server.proc.pid, lambda: time.sleep(seconds), fine=True)[1]


def _ladder(
    server: ServerProcess, pool: ConnectionPool, plan: BackendsPlan, row: dict[str, Any]
) -> None:
    # Wait cost per N, the idle CPU at `idle_connections`, then the largest number served.
    steps = sorted({*plan.wait_ns, plan.idle_connections})
    for n in steps:
        if pool.open_served(n) < n:
            break
        if n == plan.idle_connections:
            row["idle_cpu"] = _idle_cpu(server, plan.idle_seconds)
        if n in plan.wait_ns:
            trips = ping_pong(server.port, count=plan.ping_count, max_seconds=plan.ping_seconds)
            row["wait_us"][str(n)] = statistics.median(trips) * 1e6 if trips else None
        server.check_alive(f"the wait ladder at N={n}")
    row["max_served"] = pool.open_served(plan.max_cap)
    row["max_limited"] = pool.failure is not None
    row["max_stop"] = pool.failure or f"reached the cap of {plan.max_cap}"


def _echo(
    server: ServerProcess,
    baseline: ServerProcess | None,
    plan: BackendsPlan,
    row: dict[str, Any],
) -> None:
    for connections in plan.echo_connections:
        result, share = cpu_share_during(
            server.proc.pid,
            functools.partial(
                run_load,
                "127.0.0.1",
                server.port,
                connections=connections,
                size=64,
                duration=plan.echo_duration,
                warmup=plan.echo_warmup,
                connect_timeout=5.0,
            ),
        )
        server.check_alive(f"echo at C={connections}")
        row["echo"][str(connections)] = {
            "rtps": result.rtps,
            "p99_us": result.p99_us,
            "cpu_us_per_rt": cpu_us_per_round_trip(share, result.rtps),
            "errors": result.errors,
            "error_kinds": dict(result.error_kinds),
            "generator_saturated": result.generator_saturated,
        }
        if baseline is not None:
            row["vs_baseline"][str(connections)] = _versus(baseline, server, connections, plan)


def _versus(
    baseline: ServerProcess, server: ServerProcess, connections: int, plan: BackendsPlan
) -> dict[str, Any]:
    # The backend (B) against the baseline (A) in alternating windows, then the same
    # with the two swapped, half the time each: whatever favours one side cancels.
    def paired(port_a: int, port_b: int) -> PairedResult:
        return run_paired(
            "127.0.0.1",
            port_a,
            port_b,
            connections=connections,
            size=64,
            duration=plan.paired_duration / 2,
            window=plan.paired_window,
            warmup=plan.echo_warmup,
        )

    forward = paired(baseline.port, server.port)
    backward = paired(server.port, baseline.port)
    for each in (baseline, server):
        each.check_alive(f"paired echo at C={connections}")
    errors = forward.errors + backward.errors
    return {**swapped(forward, backward), "errors": errors}


def _cancel(cmd: list[str], cpu: int | None, plan: BackendsPlan, limit: int) -> dict[str, Any]:
    # A fresh server, `cancel_connections` idle connections (fewer when the backend
    # cannot serve that many), SIGTERM with a 1 ms grace, time until all are closed.
    want = min(plan.cancel_connections, limit)
    with running_server("cancel", [*cmd, "--grace", "0.001"], cpu) as server:
        pool = ConnectionPool(server.port)
        try:
            opened = pool.open_served(want)
            server.proc.send_signal(signal.SIGTERM)
            seconds = pool.wait_all_closed(plan.cancel_timeout)
        finally:
            pool.close()
    return {"connections": opened, "ms": None if seconds is None else seconds * 1000.0}


def measure_backend(
    name: str,
    plan: BackendsPlan,
    cpu: int | None,
    *,
    baseline: ServerProcess | None = None,
    has_backend: bool | None = None,
    step: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure one backend (see the module docstring); return its row as plain data.

    ``cpu`` pins the server (None: not pinned); ``baseline`` (see `running_baseline`,
    None: no ``vs_baseline`` figures) is the server the echo loads are paired with;
    ``step`` is told what is being measured. Raises BenchError when a server fails to
    start or dies, LoadEngineError when the C load engine fails.
    """
    has = listen_has_backend() if has_backend is None else has_backend
    cmd = backend_cmd(name, has_backend=has)
    row: dict[str, Any] = {
        "backend": name,
        "readiness": READINESS.get(name, ("?", "?"))[1],
        "wait_us": {str(n): None for n in plan.wait_ns},
        "idle_cpu": None,
        "echo": {},
        "vs_baseline": {},
    }
    with running_server(name, cmd, cpu) as server:
        pool = ConnectionPool(server.port)
        try:
            step(f"{name}: readiness wait with N idle connections, largest number served")
            _ladder(server, pool, plan, row)
        finally:
            pool.close()
    # A fresh server for the echo loads: tearing down the ladder's thousands of
    # connections (for `blocking`, thousands of threads queueing for the GIL) takes
    # seconds, and would be measured as the next load's latency.
    with running_server(name, cmd, cpu) as server:
        step(f"{name}: echo at C={','.join(map(str, plan.echo_connections))}")
        _echo(server, baseline, plan, row)
    step(f"{name}: cancel with {plan.cancel_connections} connections open")
    row["cancel"] = _cancel(cmd, cpu, plan, row["max_served"])
    return row


def running_baseline(cpu: int | None) -> contextlib.AbstractContextManager[ServerProcess]:
    """A plain ``trio.serve_tcp`` echo server (``triosrv/bench/_baseline.py``) on
    ``cpu``, for `measure_backend` to pair each backend with; stopped on exit.

    Raises BenchError when it fails to start."""
    return running_server(BASELINE, baseline_cmd(), cpu)


def pinned_here(cpu: int | None) -> Callable[[], None]:
    """Pin this process to ``cpu``; return the function that restores its affinity.

    ``cpu`` None (no pinning, as `plan_cpus` says where the platform cannot pin) changes
    nothing and restores nothing."""
    if cpu is None:
        return lambda: None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    return lambda: os.sched_setaffinity(0, before)
