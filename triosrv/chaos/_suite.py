"""The chaos suite: every server (a row) x every scenario (a column) -> pass/fail.

For each :class:`ServerSpec` (by default ``triosrv listen --backend B`` for every
backend), :func:`run_suite`:

1. starts the server as a subprocess (pinned to one CPU when the plan says so) and
   runs every ``triosrv chaos`` scenario against it in this process
   (:func:`~triosrv.chaos.run_scenario`), then checks that it logged no traceback;
2. runs the process-level scenarios, each against a fresh server: SIGTERM under load
   (``_suite_signals``), SIGKILL then restart on the same port (``_suite_restart``),
   EMFILE with a lowered RLIMIT_NOFILE (``_suite_emfile``).

A server that does not start, dies, or misbehaves gives failed cells, never an
exception: the suite reports on broken targets too. Every server started is stopped
(SIGTERM, then SIGKILL by pid) before the next one starts. ``triosrv chaos-suite``
is the command line.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from .._platform import can_pin, cpu_affinity
from .._server_processes import (
    BenchError,
    ServerProcess,
    machine_facts,
    machine_lines,
    running_server,
)
from ._config import Target, parse_target
from ._report import ScenarioResult
from ._run import run_scenario
from ._suite_emfile import emfile_cell
from ._suite_plan import LOG_CHECK, Cell, ServerSpec, SuitePlan
from ._suite_restart import sigkill_restart_cell
from ._suite_signals import first_line, sigterm_cell

# A logged exception (a handler crash, a bug in a backend) in the server's stderr.
TRACEBACK = re.compile(rb"Traceback \(most recent call last\):")
MAX_LOG = 1 << 26


@attrs.frozen(kw_only=True)
class SuiteReport:
    """The suite's cells, in row-major order, with the plan and the machine's facts."""

    plan: SuitePlan
    servers: tuple[str, ...]
    cells: tuple[Cell, ...]
    seconds: float
    machine: dict[str, Any]

    @property
    def passed(self) -> bool:
        """True when every cell passed."""
        return all(cell.passed for cell in self.cells)

    def failed(self) -> list[Cell]:
        """The cells that failed, in table order."""
        return [cell for cell in self.cells if not cell.passed]

    def cell(self, server: str, scenario: str) -> Cell:
        """The cell for ``server`` x ``scenario`` (KeyError if there is none)."""
        for cell in self.cells:
            if (cell.server, cell.scenario) == (server, scenario):
                return cell
        raise KeyError((server, scenario))

    def to_json(self) -> str:
        """The whole report as one JSON document."""
        doc = {
            "passed": self.passed,
            "seconds": self.seconds,
            "machine": self.machine,
            "plan": attrs.asdict(self.plan),
            "servers": list(self.servers),
            "scenarios": list(self.plan.scenario_names()),
            "cells": [cell.to_dict() for cell in self.cells],
        }
        return json.dumps(doc, indent=2, default=str)

    def rows(self) -> list[list[str]]:
        """The table: a header row (servers), then one row per scenario."""
        rows = [["scenario", *self.servers]]
        for scenario in self.plan.scenario_names():
            row = [scenario]
            for server in self.servers:
                try:
                    cell = self.cell(server, scenario)
                except KeyError:
                    row.append("-")
                    continue
                row.append(f"{'ok' if cell.passed else 'FAIL'} {cell.figure}")
            rows.append(row)
        return rows

    def format_text(self) -> str:
        """The table for a terminal, then one line per failure and the totals."""
        rows = self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(text.ljust(w) for text, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([*lines, "", *self._tail()])

    def format_markdown(self) -> str:
        """The table as Markdown (for docs/howto/chaos.md), then the failures and totals."""
        rows = self.rows()
        lines = [f"| {' | '.join(row)} |" for row in rows]
        lines.insert(1, f"|{' --- |' * len(rows[0])}")
        tail = [f"- {line}" if line.startswith("FAIL") else line for line in self._tail()]
        return "\n".join([*lines, "", *tail])

    def _tail(self) -> list[str]:
        lines = [
            f"FAIL {cell.server} / {cell.scenario}: {'; '.join(cell.failures)}"
            for cell in self.failed()
        ]
        passed = len(self.cells) - len(lines)
        summary = f"{passed}/{len(self.cells)} cells passed in {self.seconds:.0f} s"
        cpu = self.machine.get("servers_on_cpu")
        pinning = "servers not pinned" if cpu is None else f"servers pinned to CPU {cpu}"
        machine = machine_lines(self.machine)[0]
        return [*lines, *([""] if lines else []), summary, f"{machine}; {pinning}"]


def run_suite(
    specs: Sequence[ServerSpec],
    plan: SuitePlan,
    *,
    on_cell: Callable[[Cell], object] | None = None,
) -> SuiteReport:
    """Run ``plan`` against every server in ``specs``; return the table.

    ``on_cell`` is called with each cell as soon as it is known (progress). Servers run
    one at a time, each stopped before the next starts. Synchronous: it runs trio
    itself (``trio.run``) for each piece, so call it outside trio.
    """
    began = time.monotonic()
    cpu = _server_cpu(plan.pin)
    facts = machine_facts(None)
    facts.update(servers_on_cpu=cpu, load_on_cpu=None)  # this process is not pinned
    cells: list[Cell] = []

    def emit(cell: Cell) -> None:
        cells.append(cell)
        if on_cell is not None:
            on_cell(cell)

    for spec in specs:
        if plan.chaos is not None:
            _chaos_cells(spec, plan, cpu, emit)
        for name in plan.process_scenarios:
            emit(_PROCESS[name](spec, plan, cpu=cpu))
    order = {name: i for i, name in enumerate(plan.scenario_names())}
    cells.sort(key=lambda c: ([s.name for s in specs].index(c.server), order[c.scenario]))
    return SuiteReport(
        plan=plan,
        servers=tuple(spec.name for spec in specs),
        cells=tuple(cells),
        seconds=round(time.monotonic() - began, 1),
        machine=facts,
    )


def _server_cpu(pin: bool) -> int | None:
    # One CPU for the servers, when there are two to share; the rest for us.
    affinity = cpu_affinity()
    if affinity is None or not can_pin():  # macOS, most BSDs: the servers run unpinned
        return None
    cpus = sorted(affinity)
    return cpus[0] if pin and len(cpus) >= 2 else None


def _emfile(spec: ServerSpec, plan: SuitePlan, *, cpu: int | None) -> Cell:
    return emfile_cell(spec, fd_limit=plan.emfile_fd_limit, flood=plan.emfile_flood, cpu=cpu)


_PROCESS: dict[str, Callable[..., Cell]] = {
    "sigterm": sigterm_cell,
    "sigkill-restart": sigkill_restart_cell,
    "emfile": _emfile,
}


def _chaos_cells(
    spec: ServerSpec, plan: SuitePlan, cpu: int | None, emit: Callable[[Cell], None]
) -> None:
    # Every chaos scenario against one server, then the check of its log.
    assert plan.chaos is not None
    try:
        with running_server(spec.name, spec.command(0), cpu) as server:
            target = parse_target(f"127.0.0.1:{server.port}")
            on_result = functools.partial(_emit_result, spec.name, server, emit)
            trio.run(_run_scenarios, target, plan, on_result)
            log = os.pread(server.log.fileno(), MAX_LOG, 0)
    except BenchError as exc:
        for name in (*plan.chaos.scenarios, LOG_CHECK):
            emit(Cell.judged(spec.name, name, "did not start", [first_line(exc)]))
        return
    emit(_log_cell(spec.name, log))


async def _run_scenarios(
    target: Target, plan: SuitePlan, on_result: Callable[[ScenarioResult], None]
) -> None:
    # run_chaos's loop, with the p99 ratio judged only where the plan says.
    assert plan.chaos is not None
    for name in plan.chaos.scenarios:
        config = plan.chaos
        if plan.p99_scenarios is not None and name not in plan.p99_scenarios:
            config = attrs.evolve(config, max_p99_ratio=0)
        on_result(await run_scenario(name, target, config))


def _emit_result(
    name: str, server: ServerProcess, emit: Callable[[Cell], None], result: ScenarioResult
) -> None:
    failures = list(result.failures)
    status = server.proc.poll()
    if status is not None:
        failures.append(f"the server exited (status {status}) by the end of this scenario")
    emit(
        Cell.judged(
            name,
            result.name,
            chaos_figure(result),
            failures,
            server_did=result.server_did,
            p99_ratio=result.p99_ratio,
            recovered_after=result.recovered_after,
            figures=dict(result.figures),
            seconds=result.seconds,
        )
    )


def chaos_figure(result: ScenarioResult) -> str:
    """The key figure of one ``triosrv chaos`` scenario, short enough for a cell."""
    figures, name = result.figures, result.name
    if name == "flood" and "served" in figures:
        return f"{figures['served']}/{figures['connections']} served"
    if name in ("half-close", "garbage", "churn") and "ok" in figures:
        return f"{figures['ok']}/{figures['exchanges']} ok"
    if name.startswith("reset-") and "resets" in figures:
        return f"{figures['resets']} resets"
    if name == "oversize" and "received" in figures:
        mib = int(str(figures["received"])) / (1 << 20)
        return f"{mib:.0f}/{int(str(figures['bytes'])) >> 20} MiB {figures['seconds']}s"
    if result.p99_ratio is not None:
        return f"p99 {result.p99_ratio:.1f}x"
    return result.server_did[:24] or "-"


def _log_cell(name: str, log: bytes) -> Cell:
    # A traceback in the log means an exception escaped somewhere; show the last line
    # of the first one (the exception itself).
    found = list(TRACEBACK.finditer(log))
    warnings = log.count(b" WARNING ")
    failures = []
    if found:
        failures.append(
            f"{len(found)} traceback(s) logged, the first: {_exception_line(log, found[0].end())}"
        )
    figure = f"{len(found)} tracebacks" if found else "clean"
    return Cell.judged(
        name, LOG_CHECK, f"{figure}, {warnings} warnings", failures, tracebacks=len(found)
    )


def _exception_line(log: bytes, start: int) -> str:
    # The first unindented line after a "Traceback" header: the exception itself.
    for line in log[start:].decode(errors="replace").splitlines()[1:200]:
        if line and not line[0].isspace():
            return line[:300]
    return "(no exception line)"
