"""The canary process's entry point (see ``_canary_process.py`` for the protocol).

Not imported by the package, so that ``python -m`` runs it exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import trio

from ._canary import Canary
from ._client import describe
from ._config import Target, parse_target


async def run_child(target: Target, expect: str, stall: float) -> int:
    """Connect, say ``ready``, run until told to stop, print the log; the exit code."""
    canary = Canary(target, expect=expect, stall=stall)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin, trio.open_nursery() as nursery:
        try:
            await nursery.start(canary.run)
        except (OSError, trio.TooSlowError) as exc:
            print(f"error {describe(exc)}", flush=True)
            return 1
        print("ready", flush=True)
        nursery.start_soon(canary.probe)
        # Stop on "stop" or when the parent goes away (EOF).
        while (data := await stdin.receive_some()) and b"stop" not in data:
            pass
        nursery.cancel_scope.cancel()
    print(json.dumps(canary.log.to_dict()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The child's entry point."""
    parser = argparse.ArgumentParser(prog="triosrv-canary")
    parser.add_argument("target")
    parser.add_argument("--expect", choices=["echo", "any"], default="echo")
    parser.add_argument("--stall", type=float, default=1.0)
    args = parser.parse_args(argv)
    # The parent checked the target (loopback or explicitly allowed).
    target = parse_target(args.target, allow_non_loopback=True)
    return trio.run(run_child, target, args.expect, args.stall)


if __name__ == "__main__":
    sys.exit(main())
