"""Run `measure_backend` over the backends and print the table (or JSON, or a PNG)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import attrs

from .._server_processes import (
    BASELINE,
    ServerProcess,
    listen_has_backend,
    machine_facts,
    machine_lines,
    placement,
    plan_cpus,
)
from ._backends import READINESS, BackendsPlan, measure_backend, pinned_here, running_baseline
from ._load import resolve_engine
from ._report import fmt

__all__ = ["bench_backends", "render_backends"]


class _Steps:
    """One status line on stderr, rewritten per step, on a terminal only."""

    def __init__(self, total_seconds: float, enabled: bool) -> None:
        self.started = time.monotonic()
        self.total = total_seconds
        self.enabled = enabled

    def __call__(self, what: str) -> None:
        if self.enabled:
            elapsed = time.monotonic() - self.started
            line = f"[{elapsed:5.0f} s of ~{self.total:.0f} s] {what}"
            sys.stderr.write(f"\r{line[:100]:<100}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


def bench_backends(
    names: Sequence[str],
    plan: BackendsPlan,
    *,
    as_json: bool = False,
    plot: str | None = None,
    out: TextIO,
) -> dict[str, Any]:
    """Measure every named backend, one after the other; print and return the report.

    Servers run on one CPU, this process on another (its affinity is restored after).
    A plain ``trio.serve_tcp`` echo server runs beside them all, and each backend's echo
    loads are paired with it (needs the C load engine; without it the ``vs_baseline``
    figures are left out and the report says why). ``plot`` writes a PNG (needs
    matplotlib, the ``plot`` extra). Progress goes to stderr on a terminal. Raises
    BenchError when a server fails, LoadEngineError when the C load engine does.
    """
    if plot is not None:
        from ._plot import check_plotting

        check_plotting()  # fail before minutes of measuring, not after
    cpus = plan_cpus()
    engine = resolve_engine()
    machine = machine_facts(cpus, load_engine=engine)
    doc: dict[str, Any] = {"machine": machine, "plan": attrs.asdict(plan)}
    doc["baseline"] = {"server": BASELINE, "paired": engine == "c"}
    has_backend = listen_has_backend()
    steps = _Steps(
        len(names) * plan.seconds_per_backend(), sys.stdout.isatty() and sys.stderr.isatty()
    )
    server_cpu = cpus[0] if cpus else None
    restore = pinned_here(cpus[1] if cpus else None)
    try:
        with _baseline_if(engine == "c", server_cpu) as baseline:
            rows = [
                measure_backend(
                    name,
                    plan,
                    server_cpu,
                    baseline=baseline,
                    has_backend=has_backend,
                    step=steps,
                )
                for name in names
            ]
    finally:
        restore()
        steps.done()
    doc["backends"] = rows
    if plot is not None:
        from ._plot import plot_backends

        plot_backends(doc, plot)
    if as_json:
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write("\n".join(render_backends(doc)) + "\n")
    return doc


@contextlib.contextmanager
def _baseline_if(wanted: bool, cpu: int | None) -> Iterator[ServerProcess | None]:
    # Paired windows need the C load engine; without it there is no baseline to run.
    if not wanted:
        yield None
        return
    with running_baseline(cpu) as baseline:
        yield baseline


def _max_cell(row: dict[str, Any]) -> str:
    return f"{row['max_served']}" if row["max_limited"] else f">={row['max_served']}"


def _table_rows(doc: dict[str, Any]) -> list[tuple[str, list[str]]]:
    rows_by_backend = doc["backends"]
    plan = doc["plan"]
    table: list[tuple[str, list[str]]] = [
        ("connections served", [_max_cell(r) for r in rows_by_backend]),
        ("readiness found by", [READINESS[r["backend"]][0] for r in rows_by_backend]),
    ]
    for n in plan["wait_ns"]:
        cells = [_wait_cell(r, n) for r in rows_by_backend]
        table.append((f"wait us, N={n} idle", cells))
    for c in plan["echo_connections"]:
        echo = [r["echo"].get(str(c)) for r in rows_by_backend]
        table.append((f"echo rt/s, C={c}", [_echo_cell(e, "rtps", ",.0f") for e in echo]))
        table.append((f"echo p99 us, C={c}", [_echo_cell(e, "p99_us", ",.0f") for e in echo]))
        cpu = [fmt(e.get("cpu_us_per_rt") if e else None, ".1f") for e in echo]
        table.append((f"echo CPU us/rt, C={c}", cpu))
        if doc.get("baseline", {}).get("paired"):
            versus = [r.get("vs_baseline", {}).get(str(c)) for r in rows_by_backend]
            table.append((f"echo vs {BASELINE}, C={c}", [_versus_cell(v) for v in versus]))
    table.append(
        (
            f"idle CPU, {plan['idle_connections']} conns",
            [fmt(r["idle_cpu"], ".1%") for r in rows_by_backend],
        )
    )
    table.append(
        (
            f"cancel ms, {plan['cancel_connections']} open",
            [_cancel_cell(r["cancel"], plan["cancel_connections"]) for r in rows_by_backend],
        )
    )
    return table


def _wait_cell(row: dict[str, Any], n: int) -> str:
    value = row["wait_us"].get(str(n))
    if value is None and row["max_limited"] and row["max_served"] < n:
        return "limit"
    return fmt(value, ".1f")


def _echo_cell(echo: dict[str, Any] | None, key: str, spec: str) -> str:
    if echo is None:
        return "-"
    mark = "!" if echo["errors"] else ("*" if echo["generator_saturated"] else "")
    return fmt(echo[key], spec) + mark


def _versus_cell(versus: dict[str, Any] | None) -> str:
    if versus is None:
        return "-"
    return fmt(versus["ratio"], ".2f", "x") + ("!" if versus["errors"] else "")


def _cancel_cell(cancel: dict[str, Any], wanted: int) -> str:
    text = fmt(cancel["ms"], ".1f")
    return text if cancel["connections"] >= wanted else f"{text} ({cancel['connections']})"


def render_backends(doc: dict[str, Any]) -> list[str]:
    """The report for people: the table with one column per backend, then the legend."""
    names = [r["backend"] for r in doc["backends"]]
    width = max(14, *(len(n) + 2 for n in names))
    table = _table_rows(doc)
    labels = max(24, *(len(label) for label, _ in table))
    lines = [
        "I/O multiplexing, measured: one server process per backend, " + placement(doc["machine"]),
        *machine_lines(doc["machine"]),
        "",
        f"{'':<{labels}}" + "".join(f"{n:>{width}}" for n in names),
    ]
    for label, cells in table:
        lines.append(f"{label:<{labels}}" + "".join(f"{c:>{width}}" for c in cells))
    lines += [
        "",
        "connections served: opened in batches, each proved by an echo, until one was "
        "refused or unanswered ('>=': the cap was reached first)",
        "wait us: median one-byte echo round trip on one active connection while N idle "
        "connections are open ('limit': the backend could not serve N)",
        "echo: 64 B messages, '!' some errors (see --json), '*' the load generator was "
        "the bottleneck",
        "echo CPU us/rt: the server's CPU microseconds per round trip in that load",
        *_versus_legend(doc),
        "cancel ms: SIGTERM with a 1 ms grace until every client saw its connection closed",
        "",
        "how readiness is found:",
    ]
    lines += [f"  {r['backend']:<12} {r['readiness']}" for r in doc["backends"]]
    errors = [
        f"  {r['backend']:<12} C={c}: "
        + ", ".join(f"{k} {n}" for k, n in e.get("error_kinds", {}).items())
        for r in doc["backends"]
        for c, e in r["echo"].items()
        if e["errors"]
    ]
    lines += ["", "echo errors:", *errors] if errors else []
    limited = [r for r in doc["backends"] if r["max_limited"]]
    lines += ["", "why serving stopped:"] if limited else []
    lines += [
        f"  {r['backend']:<12} stopped at {r['max_served']}: {r['max_stop']}" for r in limited
    ]
    return lines


def _versus_legend(doc: dict[str, Any]) -> list[str]:
    if doc.get("baseline", {}).get("paired"):
        return [
            f"echo vs {BASELINE}: rt/s over that of a plain {BASELINE} echo server on the "
            "same CPU, in alternating windows, each way round (median of the window ratios)"
        ]
    return [
        f"echo vs {BASELINE}: not measured, paired windows need the C load engine "
        "(a C compiler on PATH)"
    ]
