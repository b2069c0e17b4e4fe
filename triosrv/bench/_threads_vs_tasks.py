"""``triosrv bench threads-vs-tasks``: the seed's thread/coroutine table, measured.

For the ``blocking`` backend (a thread per connection) and the ``trio`` backend (a task
per connection), each in a fresh server process pinned to one CPU and for each count N:
the time to open N connections that are all served (each proved by an echo; opened in
batches, as a crowd of clients arriving at once would be) and the server's resident
memory growth divided by N. The switch cost is measured in this process: two threads
handing a token back and forth through a pair of locks, against two trio tasks doing the
same through a pair of unbuffered memory channels; one hand-off is one switch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

import trio

from .._server_processes import (
    listen_has_backend,
    machine_facts,
    machine_lines,
    placement,
    plan_cpus,
    process_rss_bytes,
    running_server,
)
from ._backends import backend_cmd, pinned_here
from ._conns import ConnectionPool
from ._report import fmt, progress

__all__ = ["bench_threads_vs_tasks", "thread_switch_us", "trio_switch_us"]

MODELS = (("blocking", "threads"), ("trio", "tasks"))


def thread_switch_us(round_trips: int) -> float:
    """Microseconds per switch between two threads handing a token through two locks."""
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()

    def partner() -> None:
        for _ in range(round_trips):
            ping.acquire()
            pong.release()

    thread = threading.Thread(target=partner, name="triosrv bench switch")
    thread.start()
    started = time.perf_counter()
    try:
        for _ in range(round_trips):
            ping.release()
            pong.acquire()
    finally:
        thread.join()
    return (time.perf_counter() - started) / (2 * round_trips) * 1e6


async def _task_ping_pong(round_trips: int) -> float:
    to_partner, partner_inbox = trio.open_memory_channel[None](0)
    to_main, main_inbox = trio.open_memory_channel[None](0)

    async def partner() -> None:
        for _ in range(round_trips):
            await partner_inbox.receive()
            await to_main.send(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partner)
        started = time.perf_counter()
        for _ in range(round_trips):
            await to_partner.send(None)
            await main_inbox.receive()
        elapsed = time.perf_counter() - started
    return elapsed / (2 * round_trips) * 1e6


def trio_switch_us(round_trips: int) -> float:
    """Microseconds per switch between two trio tasks handing a token through channels."""
    return trio.run(_task_ping_pong, round_trips)


def _open_many(name: str, count: int, cpu: int | None, has_backend: bool) -> dict[str, Any]:
    # A fresh server; open `count` served connections; time it and weigh the server.
    with running_server(name, backend_cmd(name, has_backend=has_backend), cpu) as server:
        rss0 = process_rss_bytes(server.proc.pid)
        pool = ConnectionPool(server.port, batch=500, timeout=20.0)
        try:
            started = time.perf_counter()
            opened = pool.open_served(count)
            seconds = time.perf_counter() - started
            rss1 = process_rss_bytes(server.proc.pid)
            server.check_alive(f"opening {count} connections")
        finally:
            pool.close()
    per_conn = None if rss0 is None or rss1 is None or not opened else (rss1 - rss0) / opened
    return {
        "connections": count,
        "opened": opened,
        "failure": pool.failure,
        "open_ms": seconds * 1000.0 if opened == count else None,
        "rss_per_connection": per_conn,
    }


def bench_threads_vs_tasks(
    *,
    counts: Sequence[int] = (1000, 10000),
    switch_round_trips: int = 20000,
    models: Sequence[tuple[str, str]] = MODELS,
    as_json: bool = False,
    plot: str | None = None,
    out: TextIO,
) -> dict[str, Any]:
    """Measure and print (or print as JSON) the threads-vs-tasks table; return it.

    ``plot`` also writes a PNG there (needs matplotlib, the ``plot`` extra; checked
    before measuring). Raises BenchError when a server fails, ValueError for a bad count,
    RuntimeError (one line) when ``plot`` is asked for without matplotlib.
    """
    if not counts or min(counts) < 1 or switch_round_trips < 1:
        raise ValueError("connection counts and switch round trips must be at least 1")
    if plot is not None:
        from ._plot import check_plotting

        check_plotting()  # fail before minutes of measuring, not after
    cpus = plan_cpus()
    doc: dict[str, Any] = {"machine": machine_facts(cpus), "models": []}
    has_backend = listen_has_backend()
    restore = pinned_here(cpus[1] if cpus else None)
    try:
        with progress("threads-vs-tasks", len(models) * sum(1.0 + n / 2000 for n in counts)):
            for backend, kind in models:
                runs = [
                    _open_many(backend, n, cpus[0] if cpus else None, has_backend) for n in counts
                ]
                doc["models"].append({"backend": backend, "kind": kind, "runs": runs})
            # Both switch benchmarks on one CPU: a switch, not two CPUs running at once.
            doc["switch_us"] = {
                "threads": thread_switch_us(switch_round_trips),
                "tasks": trio_switch_us(switch_round_trips),
            }
    finally:
        restore()
    if as_json:
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write("\n".join(render_threads_vs_tasks(doc)) + "\n")
    if plot is not None:
        from ._plot import plot_threads_vs_tasks

        plot_threads_vs_tasks(doc, plot)
    return doc


def render_threads_vs_tasks(doc: dict[str, Any]) -> list[str]:
    """The table for people: one column per model."""
    models = doc["models"]
    header = [f"{m['kind']} ({m['backend']})" for m in models]
    lines = [
        "threads vs tasks: one fresh server process per backend and count, "
        + placement(doc["machine"]),
        *machine_lines(doc["machine"]),
        "",
        f"{'':<30}" + "".join(f"{h:>20}" for h in header),
    ]
    for index, run in enumerate(models[0]["runs"]):
        n = run["connections"]
        cells = [m["runs"][index] for m in models]
        lines.append(
            f"{f'memory per idle conn, N={n}':<30}"
            + "".join(f"{_kib(c['rss_per_connection']):>20}" for c in cells)
        )
        lines.append(
            f"{f'time to open {n} conns':<30}" + "".join(f"{_open_cell(c):>20}" for c in cells)
        )
    switch = doc["switch_us"]
    lines.append(
        f"{'switch cost (one hand-off)':<30}"
        + "".join(f"{fmt(switch[m['kind']], '.2f', ' us'):>20}" for m in models)
    )
    lines += [
        "",
        "memory: the server's RSS growth / N; open: until every connection had its echo",
        "switch: threads through a pair of locks, tasks through unbuffered memory channels",
    ]
    lines += [
        f"{m['backend']} at N={c['connections']}: served {c['opened']} ({c['failure']})"
        for m in models
        for c in m["runs"]
        if c["opened"] < c["connections"]
    ]
    return lines


def _kib(value: float | None) -> str:
    return fmt(None if value is None else value / 1024, ".1f", " KiB")


def _open_cell(run: dict[str, Any]) -> str:
    return fmt(run["open_ms"], ",.0f", " ms") if run["open_ms"] is not None else "failed"
