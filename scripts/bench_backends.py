"""Echo speed of every triosrv backend against plain ``trio.serve_tcp``, in one run.

Usage::

    python scripts/bench_backends.py [--backends trio,epoll,...] [--connections 50]
                                     [--size 64] [--runs 3] [--duration 2] [--quick]
                                     [--json]

Every server -- the baseline (``scripts/_trio_echo_baseline.py``, the textbook
``trio.serve_tcp`` echo) and ``triosrv listen --backend NAME`` for each backend -- runs
as a subprocess of its own pinned to one CPU (``taskset -c``), while this process, the
load generator (:func:`triosrv.bench.run_load`), is pinned to another. The servers are
measured in turn, round after round (baseline, trio, trio-fd, ..., baseline, trio, ...),
so that drift on a shared machine hits them all alike; each figure is the median over
the rounds. The ratios are against the baseline and against the ``trio`` backend, and
the issue's targets are checked: epoll >= 2.5x trio.serve_tcp and >= 2x the trio
backend, trio-fd >= 1x the trio backend.

All traffic goes to 127.0.0.1; every server started here is stopped (SIGTERM, then
SIGKILL by pid) before the table is printed. Only ratios inside one run mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from triosrv._config import BACKENDS  # noqa: E402
from triosrv.bench import run_load  # noqa: E402
from triosrv.bench._servers import (  # noqa: E402
    Server,
    machine_facts,
    machine_lines,
    plan_cpus,
    process_cpu_times,
    running_server,
    triosrv_listen_cmd,
)

BASELINE = "trio.serve_tcp"
BASELINE_CMD = [sys.executable, str(REPO / "scripts" / "_trio_echo_baseline.py")]
# (candidate, reference, at least): the speed targets at C=50, 64 B.
TARGETS = [("epoll", BASELINE, 2.5), ("epoll", "trio", 2.0), ("trio-fd", "trio", 1.0)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; ``--quick`` shrinks the defaults, explicit values win."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backends", help=f"Comma-separated subset of {','.join(BACKENDS)}.")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=64, help="Message size in bytes.")
    parser.add_argument("--runs", type=int, help="Rounds (default 3; --quick: 1).")
    parser.add_argument("--duration", type=float, help="Measured seconds per run (default 2).")
    parser.add_argument("--warmup", type=float, help="Warm-up seconds per run (default 0.5).")
    parser.add_argument("--quick", action="store_true", help="One short round (a smoke test).")
    parser.add_argument("--json", action="store_true", help="Print one JSON document.")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (0.3 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.1 if args.quick else 0.5)
    names = args.backends.split(",") if args.backends else list(BACKENDS)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    if args.runs < 1 or args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        parser.error("--runs and --connections must be >= 1, --duration > 0, --warmup >= 0")
    args.names = names
    return args


def commands(names: Sequence[str]) -> dict[str, list[str]]:
    """The command of every server, the baseline first."""
    cmds = {BASELINE: BASELINE_CMD}
    for name in names:
        cmds[name] = triosrv_listen_cmd("--backend", name)
    return cmds


def start_all(stack: ExitStack, cmds: dict[str, list[str]], cpu: int | None) -> list[Server]:
    """Start every server on ``cpu``; the stack stops them."""
    return [stack.enter_context(running_server(name, cmd, cpu)) for name, cmd in cmds.items()]


class Measured(NamedTuple):
    """One run of one server."""

    name: str
    rtps: float
    cpu_us: float | None  # the server's CPU microseconds per round trip
    user_us: float | None  # the user-space share of cpu_us (the interpreter, for Python)
    errors: int


def rounds(servers: list[Server], args: argparse.Namespace) -> Iterator[Measured]:
    """Measure every server once per round."""
    for _ in range(args.runs):
        for server in servers:
            cpu_before = process_cpu_times(server.proc.pid)
            result = run_load(
                "127.0.0.1",
                server.port,
                connections=args.connections,
                size=args.size,
                duration=args.duration,
                warmup=args.warmup,
                connect_timeout=10.0,
            )
            cpu_after = process_cpu_times(server.proc.pid)
            server.check_alive(f"the run of {server.name}")
            # CPU over the whole call (warm-up included) per round trip at the measured
            # rate: an estimate, but one that other processes' load barely moves.
            cpu_us = user_us = None
            if cpu_before is not None and cpu_after is not None and result.rtps:
                per_rt = 1e6 / ((args.warmup + args.duration) * result.rtps)
                user = cpu_after[0] - cpu_before[0]
                cpu_us = (user + cpu_after[1] - cpu_before[1]) * per_rt
                user_us = user * per_rt
            yield Measured(server.name, result.rtps, cpu_us, user_us, result.errors)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(measured: list[Measured], names: list[str]) -> dict[str, object]:
    """Medians, ratios and the targets' verdicts, as plain data."""
    rates = {n: statistics.median(m.rtps for m in measured if m.name == n) for n in names}
    cpu = {n: _median([m.cpu_us for m in measured if m.name == n]) for n in names}
    user = {n: _median([m.user_us for m in measured if m.name == n]) for n in names}
    errors = {n: sum(m.errors for m in measured if m.name == n) for n in names}
    base, trio_rate, base_cpu = rates[BASELINE], rates.get("trio"), cpu[BASELINE]
    rows = [
        {
            "server": n,
            "rtps": rates[n],
            "vs_serve_tcp": rates[n] / base if base else None,
            "vs_trio_backend": rates[n] / trio_rate if trio_rate else None,
            "cpu_us_per_rt": cpu[n],
            "user_us_per_rt": user[n],
            "cpu_vs_serve_tcp": base_cpu / cpu[n] if base_cpu and cpu[n] else None,
            "errors": errors[n],
        }
        for n in names
    ]
    targets = [
        {
            "target": f"{cand} >= {least:g}x {ref}",
            "ratio": rates[cand] / rates[ref],
            "met": rates[cand] / rates[ref] >= least,
        }
        for cand, ref, least in TARGETS
        if cand in rates and ref in rates and rates[ref]
    ]
    return {"rows": rows, "targets": targets}


def print_report(doc: dict[str, object], args: argparse.Namespace) -> None:
    """The table for people."""
    m = doc["machine"]
    assert isinstance(m, dict)
    print(
        f"echo, C={args.connections}, {args.size} B: medians of {args.runs} alternating "
        f"run(s) of {args.duration:g} s (after {args.warmup:g} s warm-up)"
    )
    print("\n".join(machine_lines(m)))
    print(
        f"\n{'server':<16}{'round trips/s':>14}{'vs serve_tcp':>14}{'vs trio':>10}"
        f"{'CPU us/rt':>11}{'user us/rt':>12}{'CPU vs serve_tcp':>18}{'errors':>8}"
    )
    for row in doc["rows"]:  # type: ignore[attr-defined]
        vs_base = f"{row['vs_serve_tcp']:.2f}x" if row["vs_serve_tcp"] else "-"
        vs_trio = f"{row['vs_trio_backend']:.2f}x" if row["vs_trio_backend"] else "-"
        cpu = f"{row['cpu_us_per_rt']:.1f}" if row["cpu_us_per_rt"] else "-"
        user = f"{row['user_us_per_rt']:.2f}" if row["user_us_per_rt"] else "-"
        cpu_ratio = f"{row['cpu_vs_serve_tcp']:.2f}x" if row["cpu_vs_serve_tcp"] else "-"
        print(
            f"{row['server']:<16}{row['rtps']:>14,.0f}{vs_base:>14}{vs_trio:>10}"
            f"{cpu:>11}{user:>12}{cpu_ratio:>18}{row['errors']:>8}"
        )
    print(
        "CPU us/rt: the server's CPU time per round trip (an estimate over the whole run);"
        "\nuser us/rt: the part of it spent in user space (for a Python server, the "
        "interpreter;\n  the rest is the kernel's send and recv, the same for every design)"
        "\nCPU vs serve_tcp: how many times less CPU than trio.serve_tcp a round trip costs"
    )
    print()
    for target in doc["targets"]:  # type: ignore[attr-defined]
        verdict = "met" if target["met"] else "NOT met"
        print(f"target {target['target']}: {target['ratio']:.2f}x, {verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (whatever the figures), 1 when a server failed."""
    args = parse_args(argv)
    cpus = plan_cpus()
    machine = machine_facts(cpus, with_engine=True)  # before pinning and measuring
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[1]})  # the load generator's CPU
    cmds = commands(args.names)
    with ExitStack() as stack:
        servers = start_all(stack, cmds, cpus[0] if cpus else None)
        measured = list(rounds(servers, args))
    doc = summarize(measured, list(cmds))
    doc["machine"] = machine
    doc["settings"] = {k: v for k, v in vars(args).items() if k != "names"}
    doc["commands"] = cmds
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_report(doc, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
