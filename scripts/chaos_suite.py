"""Every triosrv backend against every chaos scenario, plus SIGTERM, SIGKILL and EMFILE.

Usage::

    python scripts/chaos_suite.py [--quick] [--backends trio,epoll,...] [--json | --markdown]

For each backend this starts ``triosrv listen --backend NAME --port 0`` (pinned to one
CPU when there are two), runs every ``triosrv chaos`` scenario against it while a
canary measures its service, checks its log for tracebacks, and then runs the
process-level scenarios, each against a fresh server:

- ``sigterm``: clients keep unique, numbered messages in flight; SIGTERM; nothing may
  be echoed twice, nothing sent before the signal (or due before the drain deadline)
  may be lost, and the server must exit 0 within grace + 1 s;
- ``sigkill-restart``: SIGKILL with clients connected, then a new server on the same
  port at once (SO_REUSEADDR, over TIME_WAIT sockets), which must serve;
- ``emfile``: the server with RLIMIT_NOFILE 64 against a flood; every client served
  or shed, none left hanging, served again within 1 s, exit 0 on SIGTERM.

It prints one table, scenario x backend, each cell ``ok``/``FAIL`` with its key
figure, then why each failed cell failed. ``--quick`` (CI) shortens every attack,
lightens the heavy ones (oversize 8 MiB, churn 500, flood 1500) and judges the canary's
p99 ratio only under slowloris and slow-reader; the full mode uses ``triosrv chaos``'s
defaults. Exit status 0 when every cell passed, 1 otherwise.
Loopback only; every server started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from triosrv._config import BACKENDS  # noqa: E402
from triosrv.chaos import SCENARIO_NAMES, raise_fd_limit  # noqa: E402
from triosrv.chaos._suite import run_suite  # noqa: E402
from triosrv.chaos._suite_plan import (  # noqa: E402
    ALL_SCENARIOS,
    PROCESS_SCENARIOS,
    Cell,
    SuitePlan,
    triosrv_spec,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; unknown backends are a usage error (exit 2)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backends", help=f"Comma-separated subset of {','.join(BACKENDS)}.")
    parser.add_argument(
        "--scenarios", help=f"Comma-separated subset of {','.join(ALL_SCENARIOS[:-1])}."
    )
    parser.add_argument("--quick", action="store_true", help="The short CI run (a few minutes).")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="Print one JSON document.")
    output.add_argument("--markdown", action="store_true", help="Print the table as Markdown.")
    parser.add_argument("--no-pin", action="store_true", help="Do not pin the servers to one CPU.")
    parser.add_argument(
        "--save", type=Path, metavar="PATH", help="Also write the JSON document to PATH."
    )
    args = parser.parse_args(argv)
    args.names = args.backends.split(",") if args.backends else list(BACKENDS)
    unknown = [name for name in args.names if name not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    args.scenarios = args.scenarios.split(",") if args.scenarios else list(ALL_SCENARIOS[:-1])
    unknown = [name for name in args.scenarios if name not in ALL_SCENARIOS[:-1]]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}")
    return args


def make_plan(args: argparse.Namespace) -> SuitePlan:
    """The quick or full plan, cut down to the chosen scenarios."""
    plan = SuitePlan.quick() if args.quick else SuitePlan.full()
    chaos = [name for name in args.scenarios if name in SCENARIO_NAMES]
    assert plan.chaos is not None
    return attrs.evolve(
        plan,
        chaos=attrs.evolve(plan.chaos, scenarios=chaos) if chaos else None,
        process_scenarios=tuple(name for name in args.scenarios if name in PROCESS_SCENARIOS),
        pin=not args.no_pin,
    )


def _progress(cell: Cell) -> None:
    # One line per cell on stderr, so a long run shows where it is; stdout gets the table.
    verdict = "ok" if cell.passed else "FAIL"
    print(f"{cell.server:<12} {cell.scenario:<16} {verdict} {cell.figure}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; print the table; return 0 when every cell passed."""
    args = parse_args(argv)
    plan = make_plan(args)
    raise_fd_limit()  # the flood and the EMFILE clients need thousands of sockets
    report = run_suite([triosrv_spec(name) for name in args.names], plan, on_cell=_progress)
    if args.save is not None:
        args.save.write_text(report.to_json() + "\n")
    if args.json:
        print(report.to_json())
    elif args.markdown:
        print(report.format_markdown())
    else:
        print(report.format_text())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
