"""Is the load generator fast enough? Measure it against a C echo server, in one run.

`triosrv bench load` has two engines: a C program (the default when a compiler is
found) and a pure-Python loop. Figures for Python servers mean something only if the
generator is not the bottleneck, so this script runs the same load against a C epoll
echo server (scripts/c/echo_server.c, built here with cc) and against triosrv's default
`trio` backend, alternating, and prints the medians and the ratio C / triosrv. A ratio
of 2x or more means the generator can drive at least twice what triosrv serves, so
triosrv's figures are the server's, not the generator's.

    python scripts/bench_load_ceiling.py [--runs 3] [--duration 3] [--connections 50]
                                         [--pipeline 1] [--engine c|python|auto]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from triosrv._server_processes import (
    machine_facts,
    machine_lines,
    plan_cpus,
    running_server,
    triosrv_listen_cmd,
)
from triosrv.bench import LOAD_ENGINES, LoadResult, run_load
from triosrv.bench._report import fmt, median, ratio

C_SOURCE = Path(__file__).resolve().parent / "c" / "echo_server.c"


def build_c_server(workdir: str) -> str:
    """Compile the C echo server; return the binary's path (SystemExit if no compiler)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("error: a C compiler (cc or gcc) is needed to build the C echo server")
    binary = os.path.join(workdir, "echo_server")
    subprocess.run([compiler, "-O2", "-o", binary, str(C_SOURCE)], check=True)
    return binary


def measure(
    name: str, cmd: list[str], args: argparse.Namespace, cpus: tuple[int, int] | None
) -> LoadResult:
    server_cpu = cpus[0] if cpus else None
    with running_server(name, cmd, server_cpu) as server:
        result = run_load(
            "127.0.0.1",
            server.port,
            connections=args.connections,
            size=args.size,
            duration=args.duration,
            pipeline=args.pipeline,
            engine=args.engine,
        )
        server.check_alive("the load")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--pipeline", type=int, default=1, help="Messages in flight per connection."
    )
    parser.add_argument(
        "--engine",
        choices=LOAD_ENGINES,
        default="c",
        help="The load generator's engine (default: c, the one with the higher ceiling).",
    )
    args = parser.parse_args()
    cpus = plan_cpus()
    facts = machine_facts(cpus)  # the engine is named in the "load:" line
    if cpus:
        os.sched_setaffinity(0, {cpus[1]})
    rates: dict[str, list[float]] = {"C epoll echo": [], "triosrv (trio backend)": []}
    gen_cpu: list[float] = []
    engines: set[str] = set()
    with tempfile.TemporaryDirectory() as workdir:
        servers = {
            "C epoll echo": [build_c_server(workdir), "0"],
            "triosrv (trio backend)": triosrv_listen_cmd(),
        }
        for run in range(args.runs):
            for name, cmd in servers.items():
                result = measure(name, cmd, args, cpus)
                rates[name].append(result.rtps)
                engines.add(result.engine)
                if name.startswith("C"):
                    gen_cpu.append(result.cpu_seconds / max(result.duration, 1e-9))
                print(f"run {run + 1}/{args.runs} {name}: {result.rtps:,.0f} rt/s", file=sys.stderr)
    print("\n".join(machine_lines(facts)))
    print(
        f"load: C={args.connections}, {args.size} B, pipeline {args.pipeline}, "
        f"{args.duration:g} s x {args.runs} runs, {'/'.join(sorted(engines))} engine"
    )
    for name, values in rates.items():
        print(f"{name:24} {fmt(median(values), ',.0f')} rt/s (median)")
    c_rate, trio_rate = median(rates["C epoll echo"]), median(rates["triosrv (trio backend)"])
    print(f"ceiling ratio C / triosrv: {fmt(ratio(c_rate, trio_rate), '.2f', 'x')}")
    print(f"generator CPU against the C server: {fmt(median(gen_cpu), '.0%')} of one core")


if __name__ == "__main__":
    main()
