"""EMFILE for real: `triosrv listen` with 64 fds against a flood of 500 connections.

The flood and its bookkeeping live in ``triosrv.chaos._suite_emfile``, which the chaos
suite (triosrv chaos-suite) also runs against every backend; this test holds the
default backend to the issue's figures.
"""

from __future__ import annotations

from triosrv.chaos._suite_emfile import FD_LIMIT, FLOOD, RECOVERY_LIMIT, run_emfile
from triosrv.chaos._suite_plan import triosrv_spec


def test_emfile_flood_sheds_clients_and_recovers() -> None:
    figures = run_emfile(triosrv_spec("trio"), fd_limit=FD_LIMIT, flood=FLOOD)
    outcomes = figures.outcomes
    assert figures.died_during_flood is None, "the server exited during the flood"
    assert sum(outcomes.values()) == FLOOD
    assert outcomes["hanging"] == 0, outcomes  # nobody left hanging
    assert outcomes["served"] > 0  # fds free at first: served normally
    assert figures.shed > 0, outcomes  # out of fds: shed, not left hanging
    assert outcomes["served"] < FD_LIMIT
    assert figures.logged  # "Too many open files" and "queued connection(s)"
    # The bound: served again within 1 s.
    assert figures.recovered_after is not None and figures.recovered_after < RECOVERY_LIMIT
    assert figures.exit_status == 0  # SIGTERM after the flood: a clean stop
    assert figures.problems() == []
