"""``triosrv bench load``: run the load generator once against a target and report it."""

from __future__ import annotations

import json
from typing import Any, TextIO

from .._platform import usable_cpu_count
from ._load import LoadResult, run_load
from ._report import fmt, progress

__all__ = ["bench_load", "parse_target"]


def parse_target(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[V6ADDR]:PORT``; raise ValueError with the accepted forms."""
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT or [V6ADDR]:PORT, got {text!r}")
    return host, int(port_text)


def load_lines(target: str, result: LoadResult, warmup: float) -> list[str]:
    """The human report of one load run."""
    usable = min(result.processes, usable_cpu_count())
    share = result.cpu_seconds / result.duration / usable if result.duration > 0 else None
    process_word = "process" if result.processes == 1 else "processes"
    lines = [
        f"target {target}: {result.connections} connections, {result.size} B messages, "
        f"pipeline {result.pipeline}, {result.processes} {process_word} "
        f"({result.engine} engine), "
        f"{result.duration:.2f} s measured after >= {warmup:g} s warm-up",
        f"round trips/s   {result.rtps:,.0f}   ({result.round_trips:,} round trips)",
        f"latency us      p50 {result.p50_us:,.0f}   p90 {result.p90_us:,.0f}   "
        f"p99 {result.p99_us:,.0f}   p99.9 {result.p999_us:,.0f}   max {result.max_us:,.0f}",
        f"errors          {result.errors}"
        + "".join(f"   {kind}: {count}" for kind, count in result.error_kinds.items()),
        f"connect ms      all connected {fmt(result.connect_ms, '.1f')}   "
        f"all had a first echo {fmt(result.first_echo_ms, '.1f')}",
        f"generator CPU   {result.cpu_seconds:.2f} s over {result.duration:.2f} s "
        f"({fmt(share, '.0%')} of the {usable} CPU{'s' if usable > 1 else ''} it may use)",
    ]
    if result.generator_saturated:
        # The C engine is the cheaper generator: suggest it first when it was not used.
        remedy = "--engine c, " if result.engine == "python" else ""
        lines.append(
            "warning: the load generator itself used over 90% of its CPU: these figures "
            f"measure the generator, not the server (try {remedy}--processes 2 or fewer "
            "connections)"
        )
    return lines


def bench_load(
    target: str,
    *,
    connections: int,
    size: int,
    duration: float,
    warmup: float = 0.5,
    pipeline: int = 1,
    processes: int = 1,
    connect_timeout: float = 5.0,
    engine: str = "auto",
    as_json: bool = False,
    out: TextIO,
) -> LoadResult:
    """Drive the echo server at ``target`` once and print the report to ``out``.

    ``as_json`` prints one JSON object (the `LoadResult` fields plus ``target`` and
    ``warnings``) instead of text. A progress bar goes to stderr while the load runs,
    only on a terminal. ``engine`` is `run_load`'s (the report names the one that
    measured). Raises ValueError for a bad target or count, LoadEngineError when the C
    engine was asked for and cannot run (both one line).
    """
    host, port = parse_target(target)
    with progress(f"load {target}", warmup + duration):
        result = run_load(
            host,
            port,
            connections=connections,
            size=size,
            duration=duration,
            warmup=warmup,
            pipeline=pipeline,
            processes=processes,
            connect_timeout=connect_timeout,
            engine=engine,
        )
    if as_json:
        doc: dict[str, Any] = {"target": target, **result.to_dict()}
        doc["warnings"] = ["generator_saturated"] if result.generator_saturated else []
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write("\n".join(load_lines(target, result, warmup)) + "\n")
    return result
