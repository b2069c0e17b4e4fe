"""minikv against redis-server, measured side by side by redis-benchmark.

Both servers run for the whole measurement, each pinned to the same CPU (``taskset -c``,
``--server-cpu``, default 0); ``redis-benchmark`` runs pinned to the other
(``--bench-cpu``, default 1). For each pipeline depth (``-P 1`` and ``-P 16`` by
default) each round benchmarks both servers back to back, alternating which goes first,
with the same ``redis-benchmark -t ping,set,get,incr -c 50 -P N -n REQUESTS``. The
table gives each server's median requests/s per test over the rounds, the ratio of the
medians, and the median of the per-round ratios (the pairs measured next to each
other, which is what a loaded or drifting machine leaves meaningful)::

    python scripts/bench_minikv.py --rounds 5
    python scripts/bench_minikv.py --minikv-arg=--backend --minikv-arg=epoll

Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools) and
taskset (util-linux). Targets from issue 17: >= 0.6x redis-server at -P 1, >= 0.25x
at -P 16. A benchmark, not a test: tests/test_scripts.py only runs it tiny.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINIKV = ROOT / "examples" / "minikv.py"
TESTS = "ping,set,get,incr"
TARGETS = {1: 0.6, 16: 0.25}


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    """``argv`` run on one CPU (taskset), or as is when ``cpu`` is None."""
    if cpu is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(argv: list[str], ready: str, timeout: float = 20) -> Iterator[re.Match[str]]:
    """Start a server, wait for ``ready`` (a regex) in its log; kill it by PID after."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + timeout
            while True:
                log.seek(0)
                text = log.read().decode(errors="replace")
                match = re.search(ready, text)
                if match:
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"error: {argv[0]} did not start:\n{text}")
                time.sleep(0.05)
            yield match
        finally:
            process.kill()
            process.wait()


def run_benchmark(args: argparse.Namespace, port: int, pipeline: int) -> dict[str, float]:
    """One redis-benchmark run; requests/s per test."""
    requests = args.requests * (4 if pipeline > 1 else 1)
    argv = pinned(
        args.bench_cpu,
        [
            args.redis_benchmark,
            *("-h", "127.0.0.1", "-p", str(port), "-t", args.tests, "-c", str(args.clients)),
            *("-P", str(pipeline), "-n", str(requests), "--csv"),
        ],
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or "ERROR" in done.stdout + done.stderr:
        raise SystemExit(
            f"error: redis-benchmark failed on port {port}:\n{done.stdout}{done.stderr}"
        )
    rows = list(csv.reader(io.StringIO(done.stdout)))
    return {row[0]: float(row[1]) for row in rows[1:] if len(row) > 1}


def measure(
    args: argparse.Namespace, ports: dict[str, int]
) -> dict[tuple[str, int], list[dict[str, float]]]:
    """Every round of every pipeline depth, alternating which server goes first."""
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for pipeline in args.pipeline:
        for round_no in range(args.rounds):
            order = ["redis-server", "minikv"] if round_no % 2 == 0 else ["minikv", "redis-server"]
            for name in order:
                rps = run_benchmark(args, ports[name], pipeline)
                results.setdefault((name, pipeline), []).append(rps)
                print(
                    f"  -P {pipeline:<2} round {round_no + 1}: {name:<12} "
                    + "  ".join(f"{t} {v:,.0f}" for t, v in rps.items()),
                    file=sys.stderr,
                )
    return results


def report(
    args: argparse.Namespace, results: dict[tuple[str, int], list[dict[str, float]]]
) -> bool:
    """Print the table; True when every median of ratios meets its target."""
    ok = True
    print(f"{'test':<12} {'-P':>3} {'redis-server':>13} {'minikv':>11} {'ratio':>7} {'pairs':>7}")
    for pipeline in args.pipeline:
        redis_runs, kv_runs = results[("redis-server", pipeline)], results[("minikv", pipeline)]
        pair_ratios_all = []
        for test in redis_runs[0]:
            redis_rps = statistics.median(r[test] for r in redis_runs)
            kv_rps = statistics.median(r[test] for r in kv_runs)
            pairs = statistics.median(
                k[test] / r[test] for r, k in zip(redis_runs, kv_runs, strict=True)
            )
            pair_ratios_all.append(pairs)
            print(
                f"{test:<12} {pipeline:>3} {redis_rps:>13,.0f} {kv_rps:>11,.0f} "
                f"{kv_rps / redis_rps:>6.2f}x {pairs:>6.2f}x"
            )
        overall = statistics.median(pair_ratios_all)
        target = TARGETS.get(pipeline)
        verdict = ""
        if target is not None:
            verdict = f" (target {target:.2f}x: {'met' if overall >= target else 'NOT met'})"
        ok = ok and (target is None or overall >= target)
        print(
            f"{'all tests':<12} {pipeline:>3} {'':>13} {'':>11} {'':>7} {overall:>6.2f}x{verdict}"
        )
    return ok


def machine_facts(args: argparse.Namespace) -> str:
    commit = (
        subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "?"
    )
    cpu = "?"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    version = subprocess.run(
        [args.redis_server, "--version"], capture_output=True, text=True
    ).stdout.split()
    redis_version = next((v.split("=")[1] for v in version if v.startswith("v=")), "?")
    return (
        f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, "
        f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, redis-server {redis_version}, "
        f"load average {os.getloadavg()[0]:.2f} at start\n"
        f"servers on CPU {args.server_cpu}, redis-benchmark on CPU {args.bench_cpu}; "
        f"{args.rounds} round(s), -c {args.clients} -n {args.requests} (x4 when pipelined), "
        f"tests {args.tests}; minikv {' '.join(args.minikv_arg) or '(defaults)'}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=3, help="Rounds per pipeline depth (default 3)."
    )
    parser.add_argument(
        "--requests", type=int, default=100_000, help="redis-benchmark -n (x4 when pipelined)."
    )
    parser.add_argument("--clients", type=int, default=50, help="redis-benchmark -c (default 50).")
    parser.add_argument(
        "--pipeline", type=int, action="append", help="-P depths (default 1 and 16)."
    )
    parser.add_argument("--tests", default=TESTS, help=f"redis-benchmark -t (default {TESTS}).")
    parser.add_argument(
        "--server-cpu", type=int, default=0, help="CPU for both servers (default 0)."
    )
    parser.add_argument(
        "--bench-cpu", type=int, default=1, help="CPU for redis-benchmark (default 1)."
    )
    parser.add_argument("--no-pin", action="store_true", help="Do not pin anything (no taskset).")
    parser.add_argument(
        "--minikv-arg", action="append", default=[], help="Extra minikv option (repeatable)."
    )
    args = parser.parse_args()
    args.pipeline = args.pipeline or [1, 16]
    if args.rounds < 1 or args.requests < 1 or args.clients < 1 or min(args.pipeline) < 1:
        parser.error("--rounds, --requests, --clients and --pipeline must be >= 1")
    for tool, package in (("redis-server", "redis-server"), ("redis-benchmark", "redis-tools")):
        path = shutil.which(tool)
        if path is None:
            parser.error(f"{tool} not found: apt-get install {package}")
        setattr(args, tool.replace("-", "_"), path)
    if args.no_pin:
        args.server_cpu = args.bench_cpu = None
    elif shutil.which("taskset") is None:
        parser.error("taskset not found (util-linux); or pass --no-pin")
    return args


def main() -> int:
    args = parse_args()
    redis_port = free_port()
    redis_argv = [
        args.redis_server,
        "--port",
        str(redis_port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    minikv_argv = [sys.executable, str(MINIKV), "--port", "0", *args.minikv_arg]
    print(machine_facts(args))
    with (
        server(pinned(args.server_cpu, redis_argv), r"Ready to accept connections"),
        server(
            pinned(args.server_cpu, minikv_argv), r"listening on tcp://127\.0\.0\.1:(\d+)"
        ) as kv,
    ):
        results = measure(args, {"redis-server": redis_port, "minikv": int(kv[1])})
    print("ratio: of the medians; pairs: median of the per-round ratios (same-run pairs)")
    report(args, results)
    return 0  # the targets are reported, not enforced: this is a measurement


if __name__ == "__main__":
    sys.exit(main())
