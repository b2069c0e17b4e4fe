"""The echo benchmark: any set of servers side by side, in one run, as ratios.

Usage::

    python scripts/bench.py [--quick] [--runs N] [--duration S] [--warmup S]
                            [--connections 1,50,1000] [--size BYTES]
                            [--servers NAME,...] [--command NAME=CMD ...]
                            [--vs NAME,...] [--paired S] [--json]

The one front door of the echo measurements (``triosrv bench`` holds the others: the
backends' scaling ladders, threads against tasks, CPU work). The servers it knows: plain
``trio.serve_tcp`` (``triosrv/bench/_baseline.py``), anyio on trio, asyncio streams,
an ``asyncio.Protocol`` on asyncio's loop and on uvloop (``scripts/peers/``), the bare
Python epoll loop, ``triosrv listen`` with its default backend (``triosrv default``) and
with each backend (``triosrv epoll``, ``triosrv select``, ...). Without ``--servers`` it
measures the peers and ``triosrv default`` and ``triosrv epoll``; ``--command
NAME=CMD`` adds any server that prints ``listening on tcp://127.0.0.1:PORT`` to stderr.
A peer whose package is missing (anyio, uvloop: ``pip install -e '.[peers]'``) is
skipped with a note.

The figures the project quotes, reproduced::

    # the default backend against plain trio.serve_tcp (and the 1000-client burst:
    # the "1st echo" column, time until every client had its first echo)
    python scripts/bench.py --servers 'trio.serve_tcp,triosrv default' --runs 5
    # the epoll backend against the default backend and trio.serve_tcp
    python scripts/bench.py --servers 'trio.serve_tcp,triosrv default,triosrv epoll' \
        --connections 50 --vs 'trio.serve_tcp,triosrv default' --runs 7

Every server runs in its own process pinned to one CPU, the load generator
(`triosrv.bench.run_load`, in this process) on another. For each connection count the
servers are measured in turn, ``--runs`` rounds, the order rotating each round so that
no server always follows the same one; the table shows the median round trips per
second and p99, the spread of the runs, the server's CPU per round trip, and the ratios
to each ``--vs`` server (default plain ``trio.serve_tcp`` and asyncio streams: the
medians of the per-round ratios, which cancel the machine's drift). Every server is
stopped before anything is printed. Loopback only.

The targets (``TARGETS``) are then checked with `triosrv.bench.run_paired`:
``--paired`` seconds of windows that alternate between the candidate and its reference
every 0.2 s, both kept running, so that the two are compared under the same noise (the
rounds above are seconds apart, and on a shared machine a server's rate swings by 10-30%
within a second); half of the time with the reference as A, half the other way round
(`triosrv.bench.swapped`). ``--paired 0`` checks them on the per-round ratios instead.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shlex
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from triosrv._backends import missing_feature  # noqa: E402
from triosrv._config import BACKENDS  # noqa: E402
from triosrv._server_processes import (  # noqa: E402
    BASELINE,
    BenchError,
    ServerProcess,
    baseline_cmd,
    cpu_share_during,
    listen_has_backend,
    machine_facts,
    machine_lines,
    plan_cpus,
    running_server,
    triosrv_listen_cmd,
)
from triosrv.bench import LoadEngineError, LoadResult, run_load, run_paired, swapped  # noqa: E402
from triosrv.bench._load import resolve_engine  # noqa: E402
from triosrv.bench._report import (  # noqa: E402
    cpu_us_per_round_trip,
    fmt,
    median,
    progress,
    ratio,
    spread,
)

PEERS = REPO / "scripts" / "peers"
PY = sys.executable
CONNECT_TIMEOUT = 10.0  # plain trio.serve_tcp needs seconds for a 1000-client burst
PAIRED_WINDOW = 0.2  # seconds; long enough for 1000 connections to get going
VS = ("trio.serve_tcp", "asyncio streams")  # the default ratio columns
# Measured when --servers is not given; the other known servers only when named.
DEFAULT_SERVERS = (
    "trio.serve_tcp",
    "anyio (trio)",
    "asyncio streams",
    "asyncio Protocol",
    "uvloop Protocol",
    "bare epoll loop",
    "triosrv default",
    "triosrv epoll",
)
# The issue's targets: (candidate, reference, the connection counts it applies to or
# None for all); each is checked in paired windows (see the docstring), or with
# --paired 0 on the median of the per-round ratios.
TARGETS = (
    ("triosrv epoll", "uvloop Protocol", (50, 1000)),
    ("triosrv default", "trio.serve_tcp", None),
)


def peer_commands() -> tuple[dict[str, list[str]], dict[str, str]]:
    """The servers to measure, and a note for each one skipped."""
    commands: dict[str, list[str]] = {
        BASELINE: baseline_cmd(),
    }
    notes: dict[str, str] = {}
    if importlib.util.find_spec("anyio"):
        commands["anyio (trio)"] = [PY, str(PEERS / "anyio_trio.py")]
    else:
        notes["anyio (trio)"] = "anyio is not installed (pip install -e '.[peers]')"
    commands["asyncio streams"] = [PY, str(PEERS / "asyncio_streams.py")]
    commands["asyncio Protocol"] = [PY, str(PEERS / "asyncio_protocol.py")]
    if importlib.util.find_spec("uvloop"):
        commands["uvloop Protocol"] = [PY, str(PEERS / "asyncio_protocol.py"), "--uvloop"]
    else:
        notes["uvloop Protocol"] = "uvloop is not installed (pip install -e '.[peers]')"
    commands["bare epoll loop"] = [PY, str(PEERS / "bare_epoll.py")]
    commands["triosrv default"] = triosrv_listen_cmd()
    has_backend = listen_has_backend()
    for backend in BACKENDS:
        lacking = missing_feature(backend)
        if has_backend and lacking is None:
            commands[f"triosrv {backend}"] = triosrv_listen_cmd("--backend", backend)
        else:
            why = f"this platform has no {lacking}" if lacking else "no --backend option"
            notes[f"triosrv {backend}"] = why
    return commands, notes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; ``--quick`` changes the defaults, explicit values win."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="Shorter runs, C=50 and 1000.")
    parser.add_argument("--runs", type=int, default=3, help="Rounds over all servers.")
    parser.add_argument("--duration", type=float, help="Measured seconds per run.")
    parser.add_argument("--warmup", type=float, help="Warm-up seconds per run.")
    parser.add_argument("--connections", help="Comma-separated counts (default 1,50,1000).")
    parser.add_argument("--size", type=int, default=64, help="Message bytes (default 64).")
    parser.add_argument(
        "--servers",
        help="Comma-separated server names to measure (default: all), "
        "e.g. 'triosrv epoll,uvloop Protocol'.",
    )
    parser.add_argument(
        "--command",
        action="append",
        default=[],
        metavar="NAME=CMD",
        help="Also measure the server CMD (a shell-quoted command line that prints "
        "'listening on tcp://127.0.0.1:PORT' to stderr) as NAME; repeatable.",
    )
    parser.add_argument(
        "--vs",
        help="Comma-separated servers to show ratios against (default: "
        "'trio.serve_tcp,asyncio streams', those measured); each must be measured.",
    )
    parser.add_argument(
        "--paired",
        type=float,
        help="Seconds of alternating windows per target and connection count "
        "(default 20, --quick 8; 0: check the targets on the rounds).",
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON document.")
    args = parser.parse_args(argv)
    args.servers = [n.strip() for n in args.servers.split(",")] if args.servers else None
    args.vs = [n.strip() for n in args.vs.split(",")] if args.vs else None
    args.command = parse_commands(parser, args.command)
    if args.runs < 1 or args.size < 1:
        parser.error("--runs and --size must be at least 1")
    if args.duration is None:
        args.duration = 1.0 if args.quick else 2.0
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 0.5
    if args.paired is None:
        args.paired = 8.0 if args.quick else 20.0
    if args.paired < 0:
        parser.error("--paired must be >= 0")
    default = "50,1000" if args.quick else "1,50,1000"
    try:
        args.connections = [int(c) for c in (args.connections or default).split(",")]
    except ValueError:
        parser.error("--connections takes comma-separated integers, e.g. 1,50,1000")
    if args.duration <= 0 or args.warmup < 0 or min(args.connections) < 1:
        parser.error("--duration and --connections must be > 0 and --warmup >= 0")
    return args


def parse_commands(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, list[str]]:
    """``--command NAME=CMD`` items as {NAME: argv}; a malformed one is a usage error."""
    commands = {}
    for item in items:
        name, sep, cmd = item.partition("=")
        try:
            argv = shlex.split(cmd)
        except ValueError as exc:  # an unclosed quote
            parser.error(f"--command {item!r}: {exc}")
        if not sep or not name.strip() or not argv:
            parser.error(f"--command takes NAME=CMD, not {item!r}")
        commands[name.strip()] = argv
    return commands


def measure(server: ServerProcess, connections: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run against one server: the generator's result plus the server's CPU share."""
    result: LoadResult
    result, server_cpu = cpu_share_during(
        server.proc.pid,
        functools.partial(
            run_load,
            "127.0.0.1",
            server.port,
            connections=connections,
            size=args.size,
            duration=args.duration,
            warmup=args.warmup,
            connect_timeout=CONNECT_TIMEOUT,
        ),
    )
    server.check_alive(f"C={connections}")
    return {**result.to_dict(), "server_cpu": server_cpu}


def run_all(
    servers: list[ServerProcess], args: argparse.Namespace
) -> tuple[dict[int, dict[str, list[Any]]], list[dict[str, Any]]]:
    """Measure every connection count on every server, rotating the order each round;
    then the targets with run_paired (unless ``--paired 0``)."""
    results: dict[int, dict[str, list[Any]]] = {}
    per_run = args.warmup + args.duration + 0.3
    total = len(args.connections) * args.runs * len(servers) * per_run
    names = [s.name for s in servers]
    if args.paired:
        pairs = sum(len(targets_here(names, c)) for c in args.connections)
        total += pairs * (args.warmup + args.paired * 1.1)
    with progress("bench", total):
        for connections in args.connections:
            runs: dict[str, list[Any]] = {s.name: [] for s in servers}
            for round_number in range(args.runs):
                shift = round_number % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    runs[server.name].append(measure(server, connections, args))
            results[connections] = runs
        paired = []
        if args.paired:
            try:
                paired = run_paired_targets(servers, args)
            except LoadEngineError as exc:  # the C engine cannot run: the rounds stand
                print(f"bench: no paired windows: {exc}", file=sys.stderr)
    return results, paired


def targets_here(names: Sequence[str], connections: int) -> list[tuple[str, str]]:
    """The (candidate, reference) targets that apply to these servers at this count."""
    return [
        (candidate, reference)
        for candidate, reference, counts in TARGETS
        if candidate in names and reference in names and (counts is None or connections in counts)
    ]


def run_paired_targets(
    servers: list[ServerProcess], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Each applicable target measured with run_paired, half of ``--paired`` with the
    reference as A, half with the candidate as A; the ratio is candidate/reference."""
    by_name = {s.name: s for s in servers}
    measured = []
    for connections in args.connections:
        for candidate, reference in targets_here(list(by_name), connections):
            forward, backward = (
                run_paired(
                    "127.0.0.1",
                    by_name[a].port,
                    by_name[b].port,
                    connections=connections,
                    size=args.size,
                    duration=args.paired / 2,
                    window=PAIRED_WINDOW,
                    warmup=args.warmup,
                    connect_timeout=CONNECT_TIMEOUT,
                )
                for a, b in ((reference, candidate), (candidate, reference))
            )
            for server in (by_name[reference], by_name[candidate]):
                server.check_alive(f"paired C={connections}")
            measured.append(
                {
                    "candidate": candidate,
                    "reference": reference,
                    "connections": connections,
                    **swapped(forward, backward),
                    "reference_first": forward.to_dict(),
                    "candidate_first": backward.to_dict(),
                }
            )
    return measured


def pair_ratio(runs: dict[str, list[Any]], name: str, base: str, key: str) -> float | None:
    """Median over the rounds of name/base: each round's two runs were made close together."""
    if base not in runs:
        return None
    return median([ratio(a[key], b[key]) for a, b in zip(runs[name], runs[base], strict=True)])


def summarize(results: dict[int, dict[str, list[Any]]], vs: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (connection count, server) with medians, spread and ratios."""
    rows = []
    for connections, runs in results.items():
        for name, measured in runs.items():
            rtps = [m["rtps"] for m in measured]
            rows.append(
                {
                    "connections": connections,
                    "server": name,
                    "rtps": median(rtps),
                    "rtps_spread": spread(rtps),
                    "p99_us": median([m["p99_us"] for m in measured]),
                    "server_cpu": median([m["server_cpu"] for m in measured]),
                    "server_us_per_rt": median(
                        [cpu_us_per_round_trip(m["server_cpu"], m["rtps"]) for m in measured]
                    ),
                    "first_echo_ms": median([m["first_echo_ms"] for m in measured]),
                    "errors": sum(m["errors"] for m in measured),
                    "generator_saturated": any(m["generator_saturated"] for m in measured),
                    "vs": {base: pair_ratio(runs, name, base, "rtps") for base in vs},
                    "runs": measured,
                }
            )
    return rows


def check_targets(
    results: dict[int, dict[str, list[Any]]], paired: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The targets that apply to what was measured: each is judged on its paired ratio
    when one was measured, else on the median per-round ratio."""
    by_pair = {(p["candidate"], p["reference"], p["connections"]): p for p in paired}
    checked = []
    for connections, runs in results.items():
        for candidate, reference in targets_here(list(runs), connections):
            per_round = pair_ratio(runs, candidate, reference, "rtps")
            windows = by_pair.get((candidate, reference, connections))
            value = windows["ratio"] if windows else per_round
            checked.append(
                {
                    "target": f"{candidate} >= 1x {reference} at C={connections}",
                    "ratio": value,
                    "method": "paired windows" if windows else "per-round",
                    "quartiles": windows["quartiles"] if windows else None,
                    "per_round_ratio": per_round,
                    "met": value is not None and value >= 1.0,
                }
            )
    return checked


def print_report(doc: dict[str, Any]) -> None:
    """The table for people."""
    s = doc["settings"]
    print(
        f"echo {s['size']} B, medians of {s['runs']} rounds of {s['duration']:g} s per server "
        f"(after >= {s['warmup']:g} s warm-up), servers measured in rotating order"
    )
    for line in machine_lines(doc["machine"]):
        print(line)
    print(f"command: {doc['command']}")
    vs = s["vs"]
    print(
        f"\n{'C':>5}  {'server':<18}{'rt/s':>10} {'spread':>7}{'p99 us':>9}{'srv cpu':>8}"
        f"{'us/rt':>7}{'1st echo':>9}{'errors':>7}" + "".join(f"  vs {base}" for base in vs)
    )
    saturated = False
    for row in doc["rows"]:
        star = "*" if row["generator_saturated"] else " "
        saturated |= row["generator_saturated"]
        print(
            f"{row['connections']:>5}  {row['server']:<18}{fmt(row['rtps'], ',.0f'):>10}{star}"
            f"{fmt(row['rtps_spread'], '.0%'):>7}{fmt(row['p99_us'], ',.0f'):>9}"
            f"{fmt(row['server_cpu'], '.0%'):>8}{fmt(row['server_us_per_rt'], '.2f'):>7}"
            f"{fmt(row['first_echo_ms'], ',.0f', ' ms'):>9}{row['errors']:>7}"
            + "".join(f"{fmt(row['vs'][base], '.2f', 'x'):>{len(base) + 5}}" for base in vs)
        )
    print(
        "spread: (max - min) / median of the runs; vs: median of the per-round ratios of "
        "rt/s; srv cpu: the server's CPU share over the run; us/rt: the server's CPU "
        "microseconds per round trip; 1st echo: until every client had its first echo"
    )
    if saturated:
        print("* the load generator used over 90% of its CPU: that rate is generator-bound")
    for name, note in doc["skipped"].items():
        print(f"skipped {name}: {note}")
    if doc["targets"]:
        print()
    for target in doc["targets"]:
        verdict = "met" if target["met"] else "NOT met"
        value = fmt(target["ratio"], ".3f", "x")  # 3 places: 0.996x is not met
        if target["method"] == "per-round":
            print(f"target {target['target']}: {value} (median per-round ratio), {verdict}")
            continue
        q1, q3 = target["quartiles"] or (None, None)
        print(
            f"target {target['target']}: {value} (median of {s['paired']:g} s of "
            f"{PAIRED_WINDOW:g} s windows, quartiles {fmt(q1, '.3f')}-{fmt(q3, '.3f')}; "
            f"per-round {fmt(target['per_round_ratio'], '.3f', 'x')}), {verdict}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 on success, 1 when a server failed."""
    args = parse_args(argv)
    commands, notes = peer_commands()
    commands.update(args.command)
    wanted = [*(args.servers or DEFAULT_SERVERS), *args.command]
    unknown = sorted(set(wanted) - set(commands) - set(notes))
    if unknown:
        print(
            f"bench: unknown server(s): {', '.join(unknown)}; known: "
            f"{', '.join([*commands, *notes])}",
            file=sys.stderr,
        )
        return 2
    notes = {name: note for name, note in notes.items() if name in wanted}
    commands = {name: cmd for name, cmd in commands.items() if name in wanted}
    if args.vs is None:  # the default columns, those measured
        args.vs = [base for base in VS if base in commands]
    missing = [base for base in args.vs if base not in commands]
    if missing:
        print(f"bench: --vs names a server not measured: {', '.join(missing)}", file=sys.stderr)
        return 2
    cpus = plan_cpus()
    # Before pinning this process to one CPU.
    machine = machine_facts(cpus, load_engine=resolve_engine())
    if cpus:
        os.sched_setaffinity(0, {cpus[1]})
    try:
        with ExitStack() as stack:
            servers = [
                stack.enter_context(running_server(name, cmd, cpus[0] if cpus else None))
                for name, cmd in commands.items()
            ]
            results, paired = run_all(servers, args)
        # Leaving the ExitStack stopped every server: only now is anything printed.
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    doc = {
        "command": shlex.join(["python", "scripts/bench.py", *(argv or sys.argv[1:])]),
        "machine": machine,
        "settings": {**vars(args), "connect_timeout": CONNECT_TIMEOUT},
        "commands": commands,
        "skipped": notes,
        "rows": summarize(results, args.vs),
        "paired": paired,
        "targets": check_targets(results, paired),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_report(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
