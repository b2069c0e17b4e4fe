"""What the chaos suite runs: the servers (one per row), the sizes, and one cell's verdict.

The suite (``triosrv chaos-suite``, :func:`triosrv.chaos._suite.run_suite`) starts
each server as a subprocess, attacks it with every ``triosrv chaos`` scenario and adds
the process-level ones (SIGTERM under load, SIGKILL then restart, EMFILE). This module
holds the pieces that need no I/O: which command starts a row's server, how big each
scenario is in the quick, full and tiny (test) plans, and :class:`Cell`, one
row x scenario verdict.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._config import BACKENDS
from ._config import SCENARIO_NAMES, ChaosConfig

PROCESS_SCENARIOS = ("sigterm", "sigkill-restart", "emfile")
# Not a scenario of its own: whether the server logged a traceback during the chaos run.
LOG_CHECK = "server-log"
ALL_SCENARIOS = (*SCENARIO_NAMES, *PROCESS_SCENARIOS, LOG_CHECK)
# What a run may pick (the log check comes with the chaos scenarios).
SUITE_SCENARIOS = (*SCENARIO_NAMES, *PROCESS_SCENARIOS)


@attrs.frozen(kw_only=True)
class ServerSpec:
    """How to start one row's server: ``argv`` plus the port (and grace) flags.

    The server must print ``listening on tcp://127.0.0.1:PORT`` to stderr once it
    serves (what ``triosrv listen`` logs), bind the port given after ``port_flag``
    (0: any free port) and echo what it receives. ``grace_flag`` is the option that
    sets its drain time on SIGTERM, or None when it has none.
    """

    name: str
    argv: tuple[str, ...]
    port_flag: str = "--port"
    grace_flag: str | None = "--grace"

    def command(self, port: int = 0, *, grace: float | None = None) -> list[str]:
        """The command line that serves on ``port``, with ``grace`` when one is given."""
        cmd = [*self.argv, self.port_flag, str(port)]
        if grace is not None and self.grace_flag is not None:
            cmd += [self.grace_flag, f"{grace:g}"]
        return cmd


def triosrv_spec(backend: str) -> ServerSpec:
    """The row for ``triosrv listen --backend BACKEND`` on 127.0.0.1 (echo)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    argv = (sys.executable, "-m", "triosrv", "listen", "--host", "127.0.0.1")
    return ServerSpec(name=backend, argv=(*argv, "--backend", backend))


@attrs.frozen(kw_only=True)
class SuitePlan:
    """The sizes of one suite run; see :meth:`quick`, :meth:`full`, :meth:`tiny`.

    - ``chaos``: the ``triosrv chaos`` run against each row (its ``scenarios`` pick
      which; None skips it, and the log check with it); ``process_scenarios`` picks
      among :data:`PROCESS_SCENARIOS`.
    - SIGTERM: ``sigterm_clients`` connections keep ``sigterm_window`` messages of
      ``sigterm_size`` bytes in flight for ``sigterm_load`` seconds, then the server
      gets SIGTERM with ``--grace sigterm_grace``; a message sent up to
      ``sigterm_due`` seconds before the drain deadline must come back.
    - SIGKILL: ``restart_clients`` connections are open when the server is killed.
    - EMFILE: the server gets ``emfile_fd_limit`` fds and ``emfile_flood`` clients.
    - ``p99_scenarios``: the chaos scenarios whose canary p99 ratio is judged (None:
      all of them). Over a short attack the p99 is the worst round trip or two, so
      the quick plan judges it only where the issue asks for it.
    - ``pin``: run each server on one CPU (``taskset``) when there are two.
    """

    chaos: ChaosConfig | None
    process_scenarios: tuple[str, ...] = PROCESS_SCENARIOS
    sigterm_clients: int = 50
    sigterm_window: int = 8
    sigterm_size: int = 64
    sigterm_load: float = 2.0
    sigterm_grace: float = 3.0
    sigterm_due: float = 0.5
    restart_clients: int = 20
    emfile_fd_limit: int = 64
    emfile_flood: int = 500
    p99_scenarios: tuple[str, ...] | None = None
    pin: bool = True

    def __attrs_post_init__(self) -> None:
        for name in self.process_scenarios:
            if name not in PROCESS_SCENARIOS:
                raise ValueError(
                    f"process scenario: expected one of {', '.join(PROCESS_SCENARIOS)}, "
                    f"got {name!r}"
                )
        if self.sigterm_due >= self.sigterm_grace:
            raise ValueError("sigterm_due must be shorter than sigterm_grace")
        if self.sigterm_size < 16:
            raise ValueError("sigterm_size: at least 16 bytes (a message carries its ids)")

    @classmethod
    def choose(cls, *, quick: bool, scenarios: Sequence[str], pin: bool) -> SuitePlan:
        """The quick or full plan, cut down to ``scenarios`` (names of
        :data:`SUITE_SCENARIOS`; raises ValueError for another), pinned or not."""
        unknown = [name for name in scenarios if name not in SUITE_SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenario(s) {', '.join(unknown)}")
        plan = cls.quick() if quick else cls.full()
        chaos = tuple(name for name in scenarios if name in SCENARIO_NAMES)
        assert plan.chaos is not None
        return attrs.evolve(
            plan,
            chaos=attrs.evolve(plan.chaos, scenarios=chaos) if chaos else None,
            process_scenarios=tuple(name for name in scenarios if name in PROCESS_SCENARIOS),
            pin=pin,
        )

    @classmethod
    def full(cls) -> SuitePlan:
        """``triosrv chaos``'s defaults (64 MiB oversize, 2000 flood, 5000 churn)."""
        return cls(chaos=ChaosConfig())

    @classmethod
    def quick(cls) -> SuitePlan:
        """Short attacks and lighter heavy scenarios: all seven backends in minutes."""
        chaos = ChaosConfig(
            duration=0.5,
            quiet=0.2,
            connections=20,
            flood=1500,
            churn=500,
            oversize_bytes=8 * 1024 * 1024,
            oversize_time=10.0,
        )
        return cls(
            chaos=chaos,
            sigterm_clients=20,
            sigterm_load=0.5,
            sigterm_grace=1.5,
            restart_clients=10,
            # The bound (5x the quiet p99) is for these two. A flood's accept
            # burst (1000 connections in ~0.2 s) costs the canary 20-45 ms once: under
            # a 2 s attack that is below the p99, under a 0.5 s one it is the p99.
            p99_scenarios=("slowloris", "slow-reader"),
        )

    @classmethod
    def tiny(cls) -> SuitePlan:
        """The smallest meaningful run, for the suite's own tests (p99 check off)."""
        chaos = ChaosConfig(
            duration=0.3,
            quiet=0.1,
            connections=4,
            flood=40,
            churn=40,
            oversize_bytes=1024 * 1024,
            stall=2.0,
            recovery=3.0,
            max_p99_ratio=0,
        )
        return cls(
            chaos=chaos,
            sigterm_clients=4,
            sigterm_window=2,
            sigterm_load=0.3,
            sigterm_grace=1.5,
            restart_clients=4,
            emfile_flood=150,
            pin=False,
        )

    def scenario_names(self) -> tuple[str, ...]:
        """The table's rows in order: chaos scenarios, process ones, the log check."""
        if self.chaos is None:
            return self.process_scenarios
        return (*self.chaos.scenarios, *self.process_scenarios, LOG_CHECK)


@attrs.frozen(kw_only=True)
class Cell:
    """One row x scenario verdict: pass/fail, the key figure, why it failed, details."""

    server: str
    scenario: str
    passed: bool
    figure: str
    failures: tuple[str, ...] = ()
    details: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def judged(
        cls,
        server: str,
        scenario: str,
        figure: str,
        failures: list[str] | tuple[str, ...],
        **details: Any,
    ) -> Cell:
        """A cell that passed exactly when ``failures`` is empty."""
        return cls(
            server=server,
            scenario=scenario,
            passed=not failures,
            figure=figure,
            failures=tuple(failures),
            details=details,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return attrs.asdict(self)
