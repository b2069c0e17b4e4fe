"""``triosrv bench cpu``: where CPU-bound handler work should run, measured.

For each mode of `triosrv.bench._cpu_handlers` (inline, thread, process) it starts
``triosrv listen`` with that handler in a process of its own, then drives it from this
process for ``warmup + duration`` seconds: ``clients`` connections each keep one
CPU-heavy request in flight (``work_ms`` of CPU per request), while one canary
connection sends a short echo line every ``canary_interval_ms`` and times the answer.
The canary's latency shows how long the event loop is unavailable to everybody else;
requests per second show how much CPU the mode can use.

The server is not pinned here: the ``process`` mode's point is that worker processes
can use every CPU. The clients are light (they only wait); they run on trio.
"""

from __future__ import annotations

import importlib.util
import json
import time
from typing import Any, TextIO

import attrs
import trio

from .._server_processes import (
    BenchError,
    machine_facts,
    machine_lines,
    running_server,
    triosrv_listen_cmd,
)
from ._report import fmt, progress

__all__ = ["MODES", "CpuModeResult", "bench_cpu"]

MODES = ("inline", "thread", "process")
_SLACK = 10.0  # seconds past the planned end before a silent server counts as hung


@attrs.frozen(kw_only=True)
class CpuModeResult:
    """One mode's figures; latencies in milliseconds."""

    mode: str
    requests: int
    requests_per_s: float
    canary_samples: int
    canary_p50_ms: float | None
    canary_p99_ms: float | None
    canary_max_ms: float | None


@attrs.frozen(kw_only=True)
class _Plan:
    port: int
    work_ms: float
    clients: int
    warmup: float
    duration: float
    canary_interval: float


async def _expect(stream: trio.SocketStream, reply: bytes) -> None:
    # One reply is in flight at a time, so whatever arrives belongs to it.
    got = b""
    while len(got) < len(reply):
        data = await stream.receive_some(len(reply) - len(got))
        if not data:
            raise BenchError("the server closed a connection in the middle of the run")
        got += data
    if got != reply:
        raise BenchError(f"expected {reply!r} from the server, got {got!r}")


async def _drive(plan: _Plan) -> tuple[int, list[float]]:
    # Returns the requests completed inside the window and the canary's round trips (s).
    # The window opens after the warm-up *and* once every client has had one answer
    # (worker processes take a while to start), and closes by cancelling every client.
    completed = 0
    canary: list[float] = []
    warm_until = trio.current_time() + plan.warmup
    answered: set[int] = set()
    everyone_answered = trio.Event()
    measuring = False

    def answer(client_id: int) -> None:
        answered.add(client_id)
        if len(answered) == plan.clients + 1:
            everyone_answered.set()

    async def client(client_id: int) -> None:
        nonlocal completed
        request = f"w{plan.work_ms}\n".encode()
        async with await trio.open_tcp_stream("127.0.0.1", plan.port) as stream:
            while True:
                await stream.send_all(request)
                await _expect(stream, b"w\n")
                completed += measuring
                answer(client_id)

    async def canary_client() -> None:
        async with await trio.open_tcp_stream("127.0.0.1", plan.port) as stream:
            next_at = trio.current_time()
            while True:
                sent = time.perf_counter()
                await stream.send_all(b"e\n")
                await _expect(stream, b"e\n")
                if measuring:
                    canary.append(time.perf_counter() - sent)
                answer(-1)
                # After a long stall start afresh rather than firing a burst to catch up.
                next_at = max(next_at + plan.canary_interval, trio.current_time())
                await trio.sleep_until(next_at)

    try:
        with trio.fail_after(plan.warmup + plan.duration + _SLACK):
            async with trio.open_nursery() as nursery:
                for client_id in range(plan.clients):
                    nursery.start_soon(client, client_id)
                nursery.start_soon(canary_client)
                await everyone_answered.wait()
                await trio.sleep_until(warm_until)
                measuring = True
                await trio.sleep(plan.duration)
                nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        raise BenchError("the server stopped answering") from None
    return completed, canary


def _percentile(ordered: list[float], q: float) -> float | None:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0 if ordered else None


def _measure_mode(mode: str, plan: _Plan) -> CpuModeResult:
    cmd = triosrv_listen_cmd("--handler", f"triosrv.bench._cpu_handlers:{mode}")
    with running_server(f"cpu {mode}", cmd, None) as server:
        completed, canary = trio.run(_drive, attrs.evolve(plan, port=server.port))
        server.check_alive(f"the {mode} run")
    ordered = sorted(canary)
    return CpuModeResult(
        mode=mode,
        requests=completed,
        requests_per_s=completed / plan.duration,
        canary_samples=len(ordered),
        canary_p50_ms=_percentile(ordered, 0.5),
        canary_p99_ms=_percentile(ordered, 0.99),
        canary_max_ms=ordered[-1] * 1000.0 if ordered else None,
    )


def bench_cpu(
    *,
    work_ms: float = 3.0,
    clients: int = 4,
    duration: float = 3.0,
    warmup: float = 0.5,
    canary_interval_ms: float = 5.0,
    as_json: bool = False,
    out: TextIO,
) -> list[CpuModeResult]:
    """Measure every mode and print the table (or JSON) to ``out``; return the results.

    The ``process`` mode is skipped with a note when trio-parallel is not installed.
    Raises BenchError when a server fails, ValueError for a bad argument.
    """
    if work_ms <= 0 or clients < 1 or duration <= 0 or warmup < 0 or canary_interval_ms <= 0:
        raise ValueError("work_ms, clients, duration and canary interval must be > 0")
    machine = machine_facts(None)
    modes = [m for m in MODES if m != "process" or importlib.util.find_spec("trio_parallel")]
    skipped = {} if "process" in modes else {"process": "trio-parallel is not installed"}
    plan = _Plan(
        port=0,
        work_ms=work_ms,
        clients=clients,
        warmup=warmup,
        duration=duration,
        canary_interval=canary_interval_ms / 1000.0,
    )
    results = []
    with progress("bench cpu", len(modes) * (warmup + duration + 1.0)):
        for mode in modes:
            results.append(_measure_mode(mode, plan))
    settings = attrs.asdict(plan)
    del settings["port"]
    if as_json:
        doc = {
            "machine": machine,
            "settings": settings,
            "modes": [attrs.asdict(r) for r in results],
            "skipped": skipped,
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write("\n".join(_lines(results, machine, plan, skipped)) + "\n")
    return results


def _lines(
    results: list[CpuModeResult], machine: dict[str, Any], plan: _Plan, skipped: dict[str, str]
) -> list[str]:
    lines = [
        f"CPU-bound handler: {plan.work_ms:g} ms of pure-Python CPU per request, "
        f"{plan.clients} clients with one request each in flight, a canary echo every "
        f"{plan.canary_interval * 1000:g} ms; {plan.duration:g} s per mode after "
        f"{plan.warmup:g} s warm-up; server not pinned",
        *machine_lines(machine)[:1],
        "",
        f"{'mode':<9}{'requests/s':>11}{'canary p50 ms':>15}{'canary p99 ms':>15}"
        f"{'canary max ms':>15}{'samples':>9}",
    ]
    for r in results:
        lines.append(
            f"{r.mode:<9}{r.requests_per_s:>11,.0f}{fmt(r.canary_p50_ms, '.2f'):>15}"
            f"{fmt(r.canary_p99_ms, '.2f'):>15}{fmt(r.canary_max_ms, '.2f'):>15}"
            f"{r.canary_samples:>9}"
        )
    lines.extend(f"skipped {mode}: {note}" for mode, note in skipped.items())
    return lines
