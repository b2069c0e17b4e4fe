"""Echo speed of ``triosrv listen`` against plain ``trio.serve_tcp``, measured in one run.

Usage::

    python scripts/bench_echo.py [--quick] [--runs N] [--duration S] [--json]
                                 [--candidate-cmd "CMD ..."]

For every load of the matrix (connections 1, 50, 1000 x 64 and 4096 bytes; ``--quick``:
1 and 50 x 64 bytes, shorter) it measures both servers, alternating them (baseline,
candidate, baseline, candidate, ...), ``--runs`` times each, with the project's own load
generator (`triosrv.bench.run_load`) running in this process. It prints the medians, the
ratio candidate/baseline, the connection-burst figure (C=1000: time until every client
had its first echo) and the machine's facts. Only ratios inside one run mean anything:
this kind of machine drifts up to 2x between runs.

Each server is a subprocess of its own, pinned to one CPU (``taskset -c``) while this
process is pinned to another, so that the generator does not steal the server's CPU. A
server is ready when it prints ``listening on tcp://127.0.0.1:PORT`` to stderr (the
baseline is ``scripts/_trio_echo_baseline.py``; the candidate by default
``python -m triosrv listen --host 127.0.0.1 --port 0``; ``--candidate-cmd`` benchmarks any
command that prints that line). Every server started here is stopped (SIGTERM, then
SIGKILL by pid after 5 s) before anything is printed. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import attrs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from triosrv.bench import LoadResult, run_load  # noqa: E402
from triosrv.bench._report import fmt, median, ratio  # noqa: E402
from triosrv.bench._servers import (  # noqa: E402
    BenchError,
    Server,
    machine_facts,
    machine_lines,
    plan_cpus,
    process_cpu_seconds,
    running_server,
    triosrv_listen_cmd,
)

BASELINE_CMD = [sys.executable, str(REPO / "scripts" / "_trio_echo_baseline.py")]
CANDIDATE_CMD = triosrv_listen_cmd()
CONNECT_TIMEOUT = 10.0  # generous: plain trio.serve_tcp needs seconds for a 1000-client burst
BURST_CONNECTIONS = 1000
BURST_TARGET_MS = 500.0
FULL_LOADS = [(c, s) for c in (1, 50, 1000) for s in (64, 4096)]
QUICK_LOADS = [(1, 64), (50, 64)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; ``--quick`` changes the defaults, explicit values win."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="Two small loads, short runs.")
    parser.add_argument("--runs", type=int, default=3, help="Runs per server and load.")
    parser.add_argument("--duration", type=float, help="Measured seconds per run.")
    parser.add_argument("--warmup", type=float, help="Warm-up seconds per run.")
    parser.add_argument("--json", action="store_true", help="Print one JSON document.")
    parser.add_argument(
        "--candidate-cmd",
        help="Command of the server to compare with the baseline (default: triosrv listen).",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.duration is None:
        args.duration = 1.0 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 0.5
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    return args


@attrs.frozen(kw_only=True)
class Run:
    """One measurement: the generator's result and the server's CPU share meanwhile."""

    result: LoadResult
    server_cpu: float | None  # server CPU seconds per wall second over the whole call


def measure(server: Server, load: tuple[int, int], args: argparse.Namespace) -> Run:
    """Run one measurement against one server; fail if the server died meanwhile."""
    connections, size = load
    cpu0, t0 = process_cpu_seconds(server.proc.pid), time.monotonic()
    result = run_load(
        "127.0.0.1",
        server.port,
        connections=connections,
        size=size,
        duration=args.duration,
        warmup=args.warmup,
        connect_timeout=CONNECT_TIMEOUT,
    )
    cpu1, wall = process_cpu_seconds(server.proc.pid), time.monotonic() - t0
    if server.proc.poll() is not None:
        raise BenchError(
            f"{server.name} died during C={connections} {size} B:\n{server.log_tail()}"
        )
    server_cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall
    return Run(result=result, server_cpu=server_cpu)


def run_matrix(
    servers: list[Server], loads: list[tuple[int, int]], args: argparse.Namespace
) -> dict[tuple[int, int], dict[str, list[Run]]]:
    """Measure every load on every server, alternating servers run by run."""
    results: dict[tuple[int, int], dict[str, list[Run]]] = {}
    for load in loads:
        per_server: dict[str, list[Run]] = {s.name: [] for s in servers}
        for _ in range(args.runs):
            for server in servers:
                per_server[server.name].append(measure(server, load, args))
        results[load] = per_server
    return results


def pair_ratio(baseline: list[Run], candidate: list[Run]) -> float | None:
    """Median of candidate/baseline over the runs made back to back: robust to drift."""
    pairs = [ratio(c.result.rtps, b.result.rtps) for b, c in zip(baseline, candidate, strict=True)]
    return median(pairs)


def summarize(measured: list[Run]) -> dict[str, Any]:
    """Medians over one server's runs of one load (errors are summed)."""
    runs = [m.result for m in measured]
    return {
        "rtps": median([r.rtps for r in runs]),
        "p50_us": median([r.p50_us for r in runs]),
        "p99_us": median([r.p99_us for r in runs]),
        "connect_ms": median([r.connect_ms for r in runs]),
        "first_echo_ms": median([r.first_echo_ms for r in runs]),
        "generator_cpu": median([r.cpu_seconds / r.duration for r in runs if r.duration > 0]),
        "generator_saturated": any(r.generator_saturated for r in runs),
        "server_cpu": median([m.server_cpu for m in measured]),
        "errors": sum(r.errors for r in runs),
        "error_kinds": sorted({k for r in runs for k in r.error_kinds}),
    }


def report(
    results: dict[tuple[int, int], dict[str, list[Run]]],
    machine: dict[str, Any],
    args: argparse.Namespace,
    commands: dict[str, list[str]],
) -> dict[str, Any]:
    """Build the whole report as plain data (what --json prints)."""
    rows = []
    for (connections, size), per_server in results.items():
        base, cand = summarize(per_server["baseline"]), summarize(per_server["candidate"])
        rows.append(
            {
                "connections": connections,
                "size": size,
                "baseline": base,
                "candidate": cand,
                "ratio": {
                    k: ratio(cand[k], base[k])
                    for k in ("rtps", "p50_us", "p99_us", "first_echo_ms")
                },
                "pair_ratio_rtps": pair_ratio(per_server["baseline"], per_server["candidate"]),
                "runs": {
                    name: [{**m.result.to_dict(), "server_cpu": m.server_cpu} for m in runs]
                    for name, runs in per_server.items()
                },
            }
        )
    settings = {**vars(args), "connect_timeout": CONNECT_TIMEOUT}
    return {"machine": machine, "settings": settings, "commands": commands, "loads": rows}


def server_line(label: str, name: str, s: dict[str, Any]) -> str:
    """One table line with one server's medians."""
    star = "*" if s["generator_saturated"] else " "
    return (
        f"{label:<16}{name:<10}{fmt(s['rtps'], ',.0f'):>10}{star}{fmt(s['p50_us'], '.0f'):>8}"
        f"{fmt(s['p99_us'], '.0f'):>9}{fmt(s['first_echo_ms'], '.1f'):>15}"
        f"{fmt(s['generator_cpu'], '.0%'):>9}{fmt(s['server_cpu'], '.0%'):>9}{s['errors']:>8}"
        + (f"  {','.join(s['error_kinds'])}" if s["error_kinds"] else "")
    )


def print_loads(doc: dict[str, Any]) -> None:
    """The main table: per load, both servers' medians and the ratio."""
    print(
        f"{'load':<16}{'server':<10}{'rt/s':>11}{'p50 us':>8}{'p99 us':>9}"
        f"{'first echo ms':>15}{'gen cpu':>9}{'srv cpu':>9}{'errors':>8}"
    )
    saturated = False
    for row in doc["loads"]:
        label = f"C={row['connections']:<5} {row['size']} B"
        print(server_line(label, "baseline", row["baseline"]))
        print(server_line("", "candidate", row["candidate"]))
        r = row["ratio"]
        print(
            f"{'':<16}{'ratio':<10}{fmt(r['rtps'], '.2f', 'x'):>10}"
            f" {fmt(r['p50_us'], '.2f', 'x'):>8}"
            f"{fmt(r['p99_us'], '.2f', 'x'):>9}{fmt(r['first_echo_ms'], '.2f', 'x'):>15}"
            f"   rt/s pairs: {fmt(row['pair_ratio_rtps'], '.2f', 'x')}"
        )
        saturated |= (
            row["baseline"]["generator_saturated"] or row["candidate"]["generator_saturated"]
        )
    print(
        "gen cpu: the load generator's CPU share over the measured window; srv cpu: the"
        " server's over the whole run (connects and warm-up included)\n"
        "rt/s pairs: median of candidate/baseline over the back-to-back pairs of runs"
    )
    if saturated:
        print(
            "* the load generator used over 90% of its CPU in some run of that load: "
            "that rate is generator-bound, not server-bound"
        )


def print_burst(doc: dict[str, Any]) -> None:
    """The connection-burst figure: C=1000, time until every client had its first echo."""
    rows = [r for r in doc["loads"] if r["connections"] == BURST_CONNECTIONS]
    if not rows:
        return
    print(
        f"\nburst: {BURST_CONNECTIONS} clients connect at once; target: every one gets its "
        f"first echo within {BURST_TARGET_MS:.0f} ms (median ms from the first connect)"
    )
    print(
        f"{'size':<8}{'baseline ms':>12}{'candidate ms':>14}{'ratio':>8}  candidate within target"
    )
    for row in rows:
        base, cand = row["baseline"]["first_echo_ms"], row["candidate"]["first_echo_ms"]
        verdict = "-" if cand is None else ("yes" if cand <= BURST_TARGET_MS else "no")
        print(
            f"{str(row['size']) + ' B':<8}{fmt(base, '.1f'):>12}{fmt(cand, '.1f'):>14}"
            f"{fmt(row['ratio']['first_echo_ms'], '.2f', 'x'):>8}  {verdict}"
        )


def print_report(doc: dict[str, Any]) -> None:
    """Print the report for people."""
    m, s = doc["machine"], doc["settings"]
    print(
        f"echo: candidate vs baseline, medians of {s['runs']} alternating runs of "
        f"{s['duration']:g} s each (after >= {s['warmup']:g} s warm-up); ratio = candidate/baseline"
    )
    for line in machine_lines(m):
        print(line)
    for name, cmd in doc["commands"].items():
        print(f"{name + ':':<11}{shlex.join(cmd)}")
    print()
    print_loads(doc)
    print_burst(doc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 when a server failed."""
    args = parse_args(argv)
    candidate = shlex.split(args.candidate_cmd) if args.candidate_cmd else CANDIDATE_CMD
    commands = {"baseline": BASELINE_CMD, "candidate": candidate}
    cpus = plan_cpus()
    machine = machine_facts(cpus, with_engine=True)  # before pinning this process to one CPU
    if cpus:
        os.sched_setaffinity(0, {cpus[1]})
    try:
        with ExitStack() as stack:
            servers = [
                stack.enter_context(running_server(name, cmd, cpus[0] if cpus else None))
                for name, cmd in commands.items()
            ]
            results = run_matrix(servers, QUICK_LOADS if args.quick else FULL_LOADS, args)
        # Leaving the ExitStack stopped every server: only now is anything printed.
    except BenchError as exc:
        print(f"bench_echo: {exc}", file=sys.stderr)
        return 1
    doc = report(results, machine, args, commands)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_report(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
