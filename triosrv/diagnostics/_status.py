"""The status document a control endpoint serves, and its text rendering.

The document is plain JSON data; its shape is documented in the README
("Diagnostics") and versioned by ``"version"``. Everything in it is read in one go
without awaiting, so it describes one moment of the server.
"""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
import trio

from .._snapshots import connection_snapshots
from ._table import format_seconds, render_table
from ._tasktree import render_tree, server_nursery_labels, task_tree

STATUS_VERSION = 1
# The text view shows at most this many connections; --json always has all of them.
TEXT_MAX_CONNECTIONS = 200


def _plain(value: Any) -> Any:
    # attrs.asdict keeps tuples and Mappings; JSON wants lists and dicts. Anything
    # else that JSON cannot hold (a future ssl context, say) becomes its repr.
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def status_document(server: Any, *, started_at: float, started_wall: float) -> dict[str, Any]:
    """The status of ``server`` now, as plain data (see the README for the shape).

    ``started_at`` is the ``trio.current_time()`` and ``started_wall`` the
    ``time.time()`` when the server started. Call from inside the server's run.
    """
    now = trio.current_time()
    stats = server.statistics()
    return {
        "version": STATUS_VERSION,
        "pid": os.getpid(),
        "state": stats.state,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_wall)),
        "uptime": now - started_at,
        "addresses": list(server.addresses),
        "config": _plain(attrs.asdict(server.config)),
        "statistics": _plain(attrs.asdict(stats)),
        "connections": [attrs.asdict(s) for s in connection_snapshots(server, now=now)],
        "task_tree": task_tree(labels=server_nursery_labels(server)),
    }


def _config_line(config: dict[str, Any]) -> str:
    limits = config.get("limits", {})
    timeouts = config.get("timeouts", {})
    parts = [f"backend {config.get('backend', 'trio')}"]
    if limits:
        parts.append(
            f"max_connections {limits.get('max_connections')} (overload {limits.get('overload')})"
        )
    if timeouts:
        parts.append(
            "timeouts " + " ".join(f"{k} {_format_timeout(k, v)}" for k, v in timeouts.items())
        )
    parts.append(f"warn_blocking {format_seconds(config.get('warn_blocking'))}")
    return "config: " + ", ".join(parts)


def _format_timeout(name: str, value: Any) -> str:
    # min_receive_rate is the one Timeouts field that is not in seconds.
    if name == "min_receive_rate":
        return "-" if value is None else f"{value:g}B/s"
    return format_seconds(value)


def _statistics_rows(stats: dict[str, Any]) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for name, value in stats.items():
        if name == "state":
            continue
        if isinstance(value, dict):
            rows.extend((f"{name}.{k}", v) for k, v in value.items())
        else:
            rows.append((name, value))
    return rows


def _connection_rows(conns: list[dict[str, Any]]) -> list[tuple[object, ...]]:
    return [
        (
            c["id"],
            c["peer"],
            format_seconds(c["age"]),
            c["waiting"] or "running",
            format_seconds(c["idle_for"]) if c["waiting"] else "-",
            c["bytes_received"],
            c["bytes_sent"],
            c["next_deadline"] or "-",
            format_seconds(c["deadline_in"]),
            c["draining"],
        )
        for c in conns
    ]


def render_status(doc: dict[str, Any]) -> str:
    """The status document as text: header, config, statistics, connections, tasks."""
    conns = doc["connections"]
    lines = [
        f"triosrv pid {doc['pid']}: {doc['state']}, up {format_seconds(doc['uptime'])}"
        f" (since {doc['started']}), on {' '.join(doc['addresses']) or 'no address'}",
        _config_line(doc["config"]),
        "",
        render_table(("STATISTIC", "VALUE"), _statistics_rows(doc["statistics"])),
        "",
        f"connections: {len(conns)}",
    ]
    if conns:
        shown = conns[:TEXT_MAX_CONNECTIONS]
        headers = (
            "ID",
            "PEER",
            "AGE",
            "WAITING",
            "IDLE",
            "BYTES_IN",
            "BYTES_OUT",
            "DEADLINE",
            "DUE_IN",
            "DRAINING",
        )
        lines.append(render_table(headers, _connection_rows(shown)))
        if len(conns) > len(shown):
            lines.append(f"... and {len(conns) - len(shown)} more (--json lists all)")
    lines += ["", "task tree:", render_tree(doc["task_tree"])]
    return "\n".join(lines)
