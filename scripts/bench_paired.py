"""Compare two echo servers in paired windows: is B faster than A, and by how much?

Usage::

    python scripts/bench_paired.py --a 'COMMAND' --b 'COMMAND' [--connections 50]
                                   [--duration 10] [--runs 3] [--window 0.2] [--json]

Each COMMAND is a shell command line that starts an echo server on a free loopback port
and prints ``listening on tcp://127.0.0.1:PORT`` on stderr, as ``triosrv listen --port
0`` and the servers in ``scripts/peers/`` do. Both servers run at once, pinned to the
same CPU, the C load generator on another; ``--runs`` times, `triosrv.bench.run_paired`
measures ``--duration`` seconds of windows that alternate between them (see its
module), every second run with B's windows first (which side goes first favours it by
up to ~1%, see `triosrv.bench.swapped`). It prints each run's ratio B/A with its
quartiles, and the median of the runs.

What it is for: a change to a server measured against the code before it, two
checkouts side by side::

    git worktree add /tmp/before HEAD~1
    python scripts/bench_paired.py \\
        --a 'cd /tmp/before && exec python -m triosrv listen --port 0 --backend epoll' \\
        --b 'exec python -m triosrv listen --port 0 --backend epoll'

(``python -m`` imports the package of the directory it starts in.) The same server on
both sides gave 0.987-1.026 per 10 s run on the machine this was written on; a change
worth less than that needs several runs to show. Loopback only; both servers are stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from triosrv._server_processes import BenchError, plan_cpus, running_server  # noqa: E402
from triosrv.bench import LoadEngineError, run_paired  # noqa: E402
from triosrv.bench._report import fmt  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--a", required=True, help="Shell command of server A.")
    parser.add_argument("--b", required=True, help="Shell command of server B.")
    parser.add_argument("--connections", type=int, default=50, help="Per server (50).")
    parser.add_argument("--size", type=int, default=64, help="Message bytes (64).")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per run (10).")
    parser.add_argument("--runs", type=int, default=3, help="Runs (3).")
    parser.add_argument("--window", type=float, default=0.2, help="Window seconds (0.2).")
    parser.add_argument("--json", action="store_true", help="Print one JSON document.")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.size < 1 or args.runs < 1:
        parser.error("--connections, --size and --runs must be at least 1")
    if args.duration <= 0 or args.window <= 0:
        parser.error("--duration and --window must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 on success, 1 when a server or the generator failed."""
    args = parse_args(argv)
    cpus = plan_cpus()
    if cpus:
        os.sched_setaffinity(0, {cpus[1]})
    runs = []
    try:
        with ExitStack() as stack:
            a, b = (
                stack.enter_context(
                    running_server(name, ["sh", "-c", cmd], cpus[0] if cpus else None)
                )
                for name, cmd in (("A", args.a), ("B", args.b))
            )
            for number in range(args.runs):
                b_first = number % 2 == 1
                first, second = (b, a) if b_first else (a, b)
                result = run_paired(
                    "127.0.0.1",
                    first.port,
                    second.port,
                    connections=args.connections,
                    size=args.size,
                    duration=args.duration,
                    window=args.window,
                )
                a.check_alive("paired")
                b.check_alive("paired")
                run = result.to_dict()  # its "a" and "b" are first and second
                ratio, quartiles = result.ratio, result.quartiles
                if b_first and ratio and quartiles:  # report B/A all the same
                    ratio, quartiles = 1 / ratio, (1 / quartiles[1], 1 / quartiles[0])
                runs.append({**run, "b_first": b_first, "b_over_a": ratio})
                if not args.json:
                    q1, q3 = quartiles or (None, None)
                    print(
                        f"B/A {fmt(ratio, '.4f')} (quartiles {fmt(q1, '.3f')}-{fmt(q3, '.3f')}"
                        f"; {'B' if b_first else 'A'} first; errors {result.errors})",
                        flush=True,
                    )
    except (BenchError, LoadEngineError) as exc:
        print(f"bench_paired: {exc}", file=sys.stderr)
        return 1
    ratios = [r["b_over_a"] for r in runs if r["b_over_a"] is not None]
    median = statistics.median(ratios) if ratios else None
    if args.json:
        print(json.dumps({"settings": vars(args), "runs": runs, "median": median}, indent=2))
    else:
        print(f"median B/A over {len(runs)} run(s) of {args.duration:g} s: {fmt(median, '.4f')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
