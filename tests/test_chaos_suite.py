"""The chaos suite (triosrv chaos-suite) at a tiny size, and its checkers on their own.

Whole runs start real server subprocesses, so they are synchronous tests (the suite
runs trio itself). The p99 check is off at the tiny size: no test asserts a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import attrs
import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from triosrv._cli import _comma_list
from triosrv._config import BACKENDS
from triosrv.chaos._suite import run_suite
from triosrv.chaos._suite_emfile import EmfileFigures
from triosrv.chaos._suite_plan import (
    LOG_CHECK,
    PROCESS_SCENARIOS,
    Cell,
    ServerSpec,
    SuitePlan,
    triosrv_spec,
)
from triosrv.chaos._suite_signals import Flow, SigtermFigures, logged_stop, message

REPO = Path(__file__).parent.parent
WEAK = ServerSpec(
    name="weak",
    argv=(sys.executable, str(REPO / "scripts" / "weak_echo_server.py")),
    grace_flag=None,
)
TINY = SuitePlan.tiny()


# -- whole runs ---------------------------------------------------------------------


def test_suite_tiny_run_passes_on_trio_and_epoll_with_every_cell() -> None:
    seen: list[Cell] = []
    report = run_suite([triosrv_spec("trio"), triosrv_spec("epoll")], TINY, on_cell=seen.append)
    names = TINY.scenario_names()
    assert names[-4:] == (*PROCESS_SCENARIOS, LOG_CHECK)
    expected = [(server, name) for server in ("trio", "epoll") for name in names]
    assert [(cell.server, cell.scenario) for cell in report.cells] == expected
    assert sorted((cell.server, cell.scenario) for cell in seen) == sorted(expected)
    assert report.passed, report.format_text()
    rows = report.rows()
    assert rows[0] == ["scenario", "trio", "epoll"]
    assert [row[0] for row in rows[1:]] == list(names)
    assert all(text.startswith("ok ") for row in rows[1:] for text in row[1:]), rows
    sigterm = report.cell("epoll", "sigterm").details
    assert sigterm["exit_status"] == 0 and sigterm["echoed_before"] > 0
    assert sigterm["lost_before"] == sigterm["lost_in_drain"] == sigterm["duplicates"] == 0
    restart = report.cell("trio", "sigkill-restart").details
    assert restart["served_after"] is not None and "restart_error" not in restart
    emfile = report.cell("trio", "emfile").details
    assert emfile["outcomes"]["hanging"] == 0 and emfile["exit_status"] == 0
    doc = json.loads(report.to_json())
    assert doc["passed"] is True and len(doc["cells"]) == len(expected)
    assert "cells passed" in report.format_text()
    assert report.format_markdown().startswith("| scenario | trio | epoll |\n| --- | --- | --- |")


def test_suite_reports_a_weak_blocking_server_as_failing() -> None:
    assert TINY.chaos is not None
    plan = attrs.evolve(
        TINY,
        chaos=attrs.evolve(TINY.chaos, scenarios=("half-close",)),
        process_scenarios=("sigterm", "sigkill-restart"),
    )
    report = run_suite([WEAK], plan)
    assert not report.passed
    assert [cell.scenario for cell in report.failed()] == [
        "half-close",
        "sigterm",
        "sigkill-restart",
    ]
    sigterm = report.cell("weak", "sigterm")
    # One client at a time: the others' messages never come back; SIGTERM kills it.
    assert any("sent before SIGTERM never came back" in why for why in sigterm.failures)
    assert any("exit status -15" in why for why in sigterm.failures)
    restart = report.cell("weak", "sigkill-restart")
    assert restart.failures[0].startswith("before the kill only 1/")
    assert report.cell("weak", LOG_CHECK).passed  # it logs nothing, so nothing bad
    assert "FAIL weak / sigterm:" in report.format_text()


def test_suite_reports_a_server_that_does_not_start() -> None:
    broken = ServerSpec(name="broken", argv=(sys.executable, "-c", "raise SystemExit(3)"))
    report = run_suite([broken], TINY)
    assert len(report.cells) == len(TINY.scenario_names())
    assert all(not cell.passed and cell.figure == "did not start" for cell in report.cells)
    assert "exited with status 3" in report.cells[0].failures[0]


def _suite_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triosrv", "chaos-suite", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "trio,nope"], "unknown backend(s) nope; choose from trio,"),
        (["--backends", ","], "unknown backend(s) ','"),
        (["--scenarios", "flood,server-log"], "unknown scenario(s) server-log"),
        (["--json", "--markdown"], "--json and --markdown exclude each other"),
    ],
)
def test_chaos_suite_cli_refuses_bad_options_in_one_line(args: list[str], message: str) -> None:
    result = _suite_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_chaos_suite_cli_runs_the_cells_asked_and_saves_the_report(tmp_path: Path) -> None:
    saved = tmp_path / "suite.json"
    result = _suite_cli(
        *("--backends", "trio", "--scenarios", "sigkill-restart", "--quick", "--no-pin"),
        *("--json", "--save", str(saved)),
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["passed"] is True
    assert [(c["server"], c["scenario"]) for c in doc["cells"]] == [("trio", "sigkill-restart")]
    assert json.loads(saved.read_text()) == doc
    assert "trio         sigkill-restart  ok" in result.stderr  # progress, one line a cell


def test_suite_plan_choose_cuts_the_plan_to_the_scenarios() -> None:
    plan = SuitePlan.choose(quick=True, scenarios=["flood", "emfile"], pin=False)
    assert plan.chaos is not None and plan.chaos.scenarios == ("flood",)
    assert (plan.process_scenarios, plan.pin) == (("emfile",), False)
    only_process = SuitePlan.choose(quick=False, scenarios=["sigterm"], pin=True)
    assert only_process.chaos is None and only_process.process_scenarios == ("sigterm",)
    with pytest.raises(ValueError, match="unknown scenario"):
        SuitePlan.choose(quick=True, scenarios=["server-log"], pin=True)


@given(st.text(alphabet=",-abcdeiloprstxy \x00é", max_size=40))
def test_chaos_suite_cli_name_lists_are_a_subset_or_a_usage_error(value: str) -> None:
    parse = _comma_list(BACKENDS, "backend")
    try:
        names = parse(None, None, value)  # type: ignore[arg-type]
    except click.BadParameter as exc:
        assert "choose from" in exc.message and "\n" not in exc.message
    else:
        assert names and set(names) <= set(BACKENDS)


# -- the checkers ---------------------------------------------------------------------


def test_message_is_unique_and_sized() -> None:
    assert message(3, 7, 40) != message(3, 8, 40) != message(4, 7, 40)
    assert len(message(3, 7, 40)) == 40 and message(3, 7, 40).endswith(b"\n")
    assert message(12, 345, 64).startswith(b"0012 00000345 ")


def test_flow_counts_duplicates_skips_and_corruption() -> None:
    flow = Flow(index=1, size=32, sent_at=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    flow.check(message(1, 0, 32))
    flow.check(message(1, 1, 32))
    flow.check(message(1, 0, 32))  # again
    flow.check(message(1, 3, 32))  # 2 never came
    flow.check(message(2, 4, 32))  # another connection's message
    flow.check(b"garbage\n")
    assert (flow.echoed, flow.duplicates, flow.skipped, flow.corrupt) == (4, 1, 1, 2)
    # Outstanding: 4 (sent at 4.0) and 5 (sent at 5.0).
    assert flow.lost(float("-inf"), 4.5) == 1 and flow.lost(4.5, 10.0) == 1


def test_sigterm_figures_judge_losses_duplicates_and_a_late_exit() -> None:
    clean = SigtermFigures(
        clients=2,
        grace=1.5,
        due=0.5,
        sent=100,
        echoed=100,
        echoed_before=50,
        lost_before=0,
        lost_in_drain=0,
        duplicates=0,
        skipped=0,
        corrupt=0,
        connect_failed=0,
        exit_after=1.6,
        exit_status=0,
        ended={"eof": 2},
        ended_after_median=1.5,
    )
    assert clean.problems() == []
    bad = attrs.evolve(clean, lost_before=3, duplicates=1, exit_after=2.7, exit_status=1)
    assert bad.problems() == [
        "3 message(s) sent before SIGTERM never came back",
        "1 message(s) echoed twice",
        "exited 2.70 s after SIGTERM (limit: grace 1.5 s + 1 s)",
        "exit status 1 after SIGTERM",
    ]
    assert attrs.evolve(clean, exit_after=None, exit_status=None).problems() == [
        "still running 5.5 s after SIGTERM"
    ]


def test_logged_stop_reads_triosrv_log_times() -> None:
    log = (
        b"2026-11-27 13:58:14,314 INFO triosrv: listening on tcp://127.0.0.1:33087\n"
        b"2026-11-27 13:58:16,327 INFO triosrv: SIGTERM: shutting down, draining 50\n"
        b"2026-11-27 13:58:19,349 INFO triosrv: stopped: 50 connection(s) served\n"
    )
    assert logged_stop(log) == 3.022
    assert logged_stop(log.split(b"\n", 2)[0]) is None  # not a triosrv log


def test_emfile_figures_call_hanging_clients_and_a_slow_recovery_failures() -> None:
    good = EmfileFigures(
        fd_limit=64,
        flood=500,
        outcomes={"served": 54, "closed": 446, "hanging": 0},
        died_during_flood=None,
        recovered_after=0.1,
        exit_status=0,
        logged=True,
    )
    assert good.problems() == [] and good.shed == 446
    bad = attrs.evolve(good, outcomes={"served": 54, "hanging": 446}, recovered_after=None)
    assert bad.problems() == [
        "446/500 flood clients left hanging (neither served nor closed within 10 s)",
        "no flood client was shed (closed or reset)",
        "not served again within 1 s after the flood (never)",
    ]
