"""The status document a control endpoint serves, and its text rendering.

The document is plain JSON data; its shape is documented in
``docs/reference/status.md`` and versioned by ``"version"``.

What it costs, and how it scales. The connections are listed a page at a time
(``offset``/``limit``, at most :data:`MAX_LIMIT` per request, :data:`DEFAULT_LIMIT` by
default) and the task tree lists at most :data:`TREE_MAX_TASKS` tasks per nursery, so
one request costs about the same with 10,000 connections as with 1,000. The control
endpoint builds it with :func:`build_status_document`, which yields to the event loop
every :data:`CHUNK` connections (and while encoding), so pollers do not stall the
connections being served: the page is then a sequence of moments a few milliseconds
apart rather than one moment. :func:`status_document` builds the same document in one
go, without awaiting.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import trio

from .._snapshots import snapshot_connection
from ._table import format_seconds, render_table
from ._tasktree import render_tree, server_nursery_labels, task_tree

STATUS_VERSION = 1
# The text view shows at most this many connections.
TEXT_MAX_CONNECTIONS = 200
#: Connections listed per request unless ``limit`` says otherwise, and at most.
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
#: Tasks listed per nursery in the document's task tree (the rest are counted).
TREE_MAX_TASKS = 20
#: Connections snapshotted (and encoded) between two yields to the event loop.
CHUNK = 50


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


def _page(server: Any, offset: int, limit: int) -> tuple[list[Any], int]:
    # The live table is a dict filled in id order (ids only grow), so its values are
    # already sorted by id: a page is a slice, not a sort of every connection.
    live = server.live_connections()
    return live[offset : offset + limit], len(live)


def _header(
    server: Any, *, started_at: float, started_wall: float, now: float, total: int, offset: int
) -> dict[str, Any]:
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
        "connections_total": total,
        "connections_offset": offset,
        "connections": [],
    }


def _begin(
    server: Any, started_at: float, started_wall: float, offset: object, limit: object
) -> tuple[dict[str, Any], list[Any], float]:
    # Everything but the connections: the header, the page to list, the moment.
    offset, limit = check_page(offset, limit)
    now = trio.current_time()
    page, total = _page(server, offset, limit)
    doc = _header(
        server,
        started_at=started_at,
        started_wall=started_wall,
        now=now,
        total=total,
        offset=offset,
    )
    doc["task_tree"] = task_tree(labels=server_nursery_labels(server), max_tasks=TREE_MAX_TASKS)
    return doc, page, now


def _snapshot_dicts(page: Sequence[Any], server: Any, now: float) -> Iterator[dict[str, Any]]:
    timeouts = getattr(getattr(server, "config", None), "timeouts", None)
    for conn in page:
        yield attrs.asdict(snapshot_connection(conn, timeouts, now))


def check_page(offset: object, limit: object) -> tuple[int, int]:
    """Validate a request's ``offset`` and ``limit``; ValueError naming the field."""
    for name, value, top in (("offset", offset, None), ("limit", limit, MAX_LIMIT)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name}: expected an integer >= 0, got {value!r}"[:200])
        if top is not None and value > top:
            raise ValueError(f"{name}: at most {top}, got {value}")
    assert isinstance(offset, int) and isinstance(limit, int)  # for mypy: checked above
    return offset, limit


def status_document(
    server: Any,
    *,
    started_at: float,
    started_wall: float,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """The status of ``server`` now, as plain data (its shape: docs/reference/status.md),
    built in one go: one consistent moment, at a cost that grows with ``limit``.

    ``started_at`` is the ``trio.current_time()`` and ``started_wall`` the
    ``time.time()`` when the server started; ``offset``/``limit`` choose the page of
    connections (by id). Call from inside the server's run.
    """
    doc, page, now = _begin(server, started_at, started_wall, offset, limit)
    doc["connections"] = list(_snapshot_dicts(page, server, now))
    return doc


async def build_status_document(
    server: Any,
    *,
    started_at: float,
    started_wall: float,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> bytes:
    """The status document as one JSON line (with its newline), built and encoded a
    :data:`CHUNK` of connections at a time with a checkpoint between chunks, so that
    a large status costs the event loop many short steps instead of one long one."""
    doc, page, now = _begin(server, started_at, started_wall, offset, limit)
    doc["connections"] = await snapshot_dicts(page, server, now)
    return await encode_document(doc)


async def snapshot_page(server: Any, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Connections ``offset`` to ``offset + limit`` (by id) of ``server`` as plain
    dicts, snapshotted :data:`CHUNK` at a time with a checkpoint between chunks; and
    how many connections there are in all."""
    now = trio.current_time()
    page, total = _page(server, offset, limit)
    return await snapshot_dicts(page, server, now), total


async def snapshot_dicts(page: Sequence[Any], server: Any, now: float) -> list[dict[str, Any]]:
    """``page``'s connections as plain dicts, a :data:`CHUNK` between checkpoints."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(page), CHUNK):
        if start:
            await trio.lowlevel.checkpoint()
        out.extend(_snapshot_dicts(page[start : start + CHUNK], server, now))
    return out


async def encode_document(doc: dict[str, Any]) -> bytes:
    """A status document as one JSON line (with its newline); its ``connections``
    are encoded a :data:`CHUNK` at a time with a checkpoint between chunks."""
    conns = doc["connections"]
    head, tail = _dumps({**doc, "connections": []}).split(b'"connections":[]', 1)
    pieces = [head, b'"connections":[']
    for start in range(0, len(conns), CHUNK):
        await trio.lowlevel.checkpoint()
        encoded = _dumps(conns[start : start + CHUNK])[1:-1]  # the items, no brackets
        if encoded:
            pieces.append(b"," + encoded if start else encoded)
    pieces += [b"]", tail, b"\n"]
    await trio.lowlevel.checkpoint()
    return b"".join(pieces)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


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


def _generation_lines(doc: dict[str, Any]) -> list[str]:
    # The master's document (triosrv listen): its generations and reload attempts.
    if "generations" not in doc:
        return []
    lines: list[str] = []
    rows: list[tuple[object, ...]] = []
    for gen in doc["generations"]:
        title = f"generation {gen['generation']} ({gen['kind']}, {gen['state']})"
        for worker in gen["workers"]:
            connections = worker.get("connections")
            rows.append(
                (
                    title,
                    worker["index"],
                    worker["pid"] or "-",
                    worker["state"],
                    "-" if connections is None else connections,
                    worker["restarts"],
                    worker.get("message") or "",
                )
            )
    if rows:
        headers = ("GENERATION", "WORKER", "PID", "STATE", "CONNECTIONS", "RESTARTS", "MESSAGE")
        lines += ["", render_table(headers, rows)]
    reloads = doc.get("reloads") or []
    if reloads:
        failed = [r for r in reloads if not r["ok"]]
        lines.append(
            f"reloads: {len(reloads) - len(failed)} ok, {len(failed)} failed (last {len(reloads)})"
        )
        if failed:
            last = failed[-1]
            lines.append(
                f"last failed reload: generation {last['generation']} at {last['time']}: "
                f"{last['reason']}"
            )
    return lines


def render_status(doc: dict[str, Any]) -> str:
    """The status document as text: header, config, statistics, connections, tasks."""
    conns = doc["connections"]
    lines = [
        f"triosrv pid {doc['pid']}: {doc['state']}, up {format_seconds(doc['uptime'])}"
        f" (since {doc['started']}), on {' '.join(doc['addresses']) or 'no address'}",
        _config_line(doc["config"]),
        *_generation_lines(doc),
        "",
        render_table(("STATISTIC", "VALUE"), _statistics_rows(doc["statistics"])),
        "",
        f"connections: {doc.get('connections_total', len(conns))}",
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
        more = doc.get("connections_total", len(conns)) - len(shown)
        if more > 0:
            lines.append(f"... and {more} more (--offset K --limit N page through them)")
    lines += ["", "task tree:", render_tree(doc["task_tree"])]
    return "\n".join(lines)
