"""What the master shows: its control endpoint, status document and metrics.

The master asks each worker of each live generation over the worker's private control
socket (``statistics`` for metrics, ``status`` for ``triosrv status``) and adds up
what they say; a generation served in the master's own process (``kind`` ``"local"``)
is read directly. A worker that does not answer within ``WORKER_TIMEOUT`` seconds is
shown without numbers rather than holding the answer up.

This module reads the master through the small protocols below (``MasterView``) and
never imports ``_master``: the master imports this module, not the other way round.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeGuard

import attrs
import trio

from ._config import ServerConfig
from ._server import Server, ServerStatistics
from ._workers import WorkerStatus
from .diagnostics import ControlEndpoint, DiagnosticsError, control_request, serve_control
from .diagnostics._control import _encode, _parse
from .diagnostics._status import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    STATUS_VERSION,
    TREE_MAX_TASKS,
    _plain,
    check_page,
    encode_document,
    snapshot_page,
)
from .diagnostics._tasktree import server_nursery_labels, task_tree

logger = logging.getLogger("triosrv")

#: Seconds the master waits for one worker's answer.
WORKER_TIMEOUT = 2.0
MASTER_COMMANDS = ("status", "drain", "statistics", "reload")
_STAT_FIELDS = {field.name for field in attrs.fields(ServerStatistics)}


class GenerationView(Protocol):
    """What the status reads of one generation of the master."""

    @property
    def number(self) -> int:
        """The generation's number (1, 2, ... one per reload)."""

    @property
    def kind(self) -> str:
        """``"local"`` (served in the master's process) or ``"processes"``."""

    @property
    def state(self) -> str:
        """``starting``, ``serving``, ``draining``, ``stopped`` or ``failed``."""

    @property
    def started_wall(self) -> float:
        """When the generation started (``time.time()``)."""

    def status(self) -> list[WorkerStatus]:
        """A copy of every worker's status, in index order."""


class LocalGenerationView(GenerationView, Protocol):
    """A generation of kind ``"local"``: its server runs in this process."""

    @property
    def server(self) -> Server | None:
        """The running server (None before it started)."""


class ReloadView(attrs.AttrsInstance, Protocol):
    """One reload attempt (an attrs instance), as ``status`` lists it."""

    @property
    def generation(self) -> int:
        """The generation the reload started (or tried to)."""

    @property
    def ok(self) -> bool:
        """Whether the new generation took over."""

    @property
    def reason(self) -> str | None:
        """Why it failed (None if it did not)."""


class MasterView(Protocol):
    """What the control endpoint, status and metrics read of (and ask of) the master."""

    @property
    def generations(self) -> Sequence[GenerationView]:
        """Every live generation, oldest first."""

    @property
    def current(self) -> GenerationView | None:
        """The generation serving new connections (None before the first)."""

    @property
    def state(self) -> str:
        """``starting``, ``serving``, ``draining`` or ``closed``."""

    @property
    def started_at(self) -> float:
        """When the master started serving (``trio.current_time()``)."""

    @property
    def started_wall(self) -> float:
        """When the master started (``time.time()``)."""

    @property
    def addresses(self) -> list[str]:
        """The listening addresses, as the master bound them."""

    @property
    def config(self) -> ServerConfig:
        """The configuration of the current generation."""

    @property
    def options(self) -> Mapping[str, Any]:
        """The effective options (``control``, ``metrics``, ...)."""

    @property
    def reloads(self) -> Sequence[ReloadView]:
        """The last reload attempts, oldest first."""

    async def reload(self, origin: str = "reload") -> ReloadView | None:
        """Start a new generation; None if one was queued behind a running reload."""

    def stop(self, reason: str, grace: float | None = None) -> None:
        """Stop serving: drain every generation within ``grace`` seconds."""


def _is_local(generation: GenerationView) -> TypeGuard[LocalGenerationView]:
    return generation.kind == "local"


@attrs.define(kw_only=True)
class WorkerReport:
    """One worker of one generation, with what it answered (None: no answer)."""

    generation: int
    kind: str
    worker: Any
    doc: dict[str, Any] | None


async def worker_reports(
    master: MasterView, cmd: str, *, limit: int = DEFAULT_LIMIT
) -> list[WorkerReport]:
    """Every worker of every live generation, with its answer to ``cmd`` (``status``:
    its first ``limit`` connections)."""
    reports = []
    for generation in list(master.generations):
        for worker in generation.status():
            doc: dict[str, Any] | None = None
            if _is_local(generation):
                if generation.server is not None:
                    doc = await _local_doc(generation.server, cmd, limit)
            elif worker.state in ("ready", "stopping") and worker.control is not None:
                request: dict[str, object] = {"cmd": cmd}
                if cmd == "status":
                    request["limit"] = limit
                doc = await _ask(worker.control, request)
            reports.append(
                WorkerReport(
                    generation=generation.number, kind=generation.kind, worker=worker, doc=doc
                )
            )
    return reports


async def _local_doc(server: Server, cmd: str, limit: int) -> dict[str, Any]:
    # This process's own server: its first ``limit`` connections, snapshotted a chunk
    # at a time so that the connections being served wait behind one chunk at most.
    stats = _plain(attrs.asdict(server.statistics()))
    doc: dict[str, Any] = {"pid": os.getpid(), "state": stats["state"], "statistics": stats}
    if cmd == "status":
        doc["connections"], doc["connections_total"] = await snapshot_page(server, 0, limit)
    return doc


async def _ask(path: str, request: dict[str, object]) -> dict[str, Any] | None:
    try:
        answer = await control_request(path, request, timeout=WORKER_TIMEOUT)
    except DiagnosticsError:
        return None  # gone meanwhile, or too busy to answer: shown without numbers
    return None if "error" in answer else answer


def statistics_from(doc: Mapping[str, Any]) -> ServerStatistics | None:
    """A worker's statistics as a :class:`ServerStatistics` (None if unreadable)."""
    stats = doc.get("statistics")
    if not isinstance(stats, dict):
        return None
    try:
        return ServerStatistics(**{k: v for k, v in stats.items() if k in _STAT_FIELDS})
    except TypeError:  # a worker of another version, missing a field
        return None


def add_statistics(docs: list[dict[str, Any]], state: str, backend: str) -> dict[str, Any]:
    """The sum of several workers' statistics (plain dicts), as one dict."""
    total: dict[str, Any] = {"state": state}
    for stats in docs:
        for name, value in stats.items():
            if isinstance(value, bool) or name == "state":
                continue
            if isinstance(value, int):
                total[name] = total.get(name, 0) + value
            elif isinstance(value, dict):
                into = total.setdefault(name, {})
                for kind, count in value.items():
                    into[kind] = into.get(kind, 0) + count
    total["backend"] = backend
    return total


async def status_document(
    master: MasterView, *, offset: int = 0, limit: int = DEFAULT_LIMIT
) -> dict[str, Any]:
    """The master's status: the usual document (its counters summed over every
    worker, ``offset``/``limit`` paging through every worker's connections) plus
    ``generation``, ``generations`` (per worker: pid, state, connections, restarts)
    and ``reloads`` (the last attempts). Raises ValueError for a bad page."""
    offset, limit = check_page(offset, limit)
    reports = await worker_reports(master, "status", limit=min(offset + limit, MAX_LIMIT))
    connections: list[dict[str, Any]] = []
    total = 0
    generations: dict[int, dict[str, Any]] = {}
    for generation in master.generations:
        generations[generation.number] = {
            "generation": generation.number,
            "kind": generation.kind,
            "state": generation.state,
            "started": _iso(generation.started_wall),
            "workers": [],
        }
    for report in reports:
        doc = report.doc or {}
        stats = doc.get("statistics") if isinstance(doc.get("statistics"), dict) else None
        total += int(doc.get("connections_total", 0))
        for conn in doc.get("connections", []):
            connections.append({**conn, "worker_pid": report.worker.pid})
        worker = _plain(attrs.asdict(report.worker))
        worker.pop("control", None)
        worker["connections"] = None if stats is None else stats.get("active")
        worker["statistics"] = stats
        generations[report.generation]["workers"].append(worker)
    local = [g.server for g in master.generations if _is_local(g) and g.server]
    labels = server_nursery_labels(local[0]) if local else {}
    now = trio.current_time()
    return {
        "version": STATUS_VERSION,
        "pid": os.getpid(),
        "state": master.state,
        "started": _iso(master.started_wall),
        "uptime": now - master.started_at,
        "addresses": master.addresses,
        "config": _plain(attrs.asdict(master.config)),
        "statistics": add_statistics(
            [
                w["statistics"]
                for g in generations.values()
                for w in g["workers"]
                if w["statistics"]
            ],
            master.state,
            master.config.backend,
        ),
        "connections_total": total,
        "connections_offset": offset,
        "connections": connections[offset : offset + limit],
        "task_tree": task_tree(labels=labels, max_tasks=TREE_MAX_TASKS),
        "generation": 0 if master.current is None else master.current.number,
        "generations": list(generations.values()),
        "reloads": [attrs.asdict(attempt) for attempt in master.reloads],
    }


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


class MasterControl(ControlEndpoint):
    """The master's control endpoint: ``status`` (every generation), ``statistics``
    (summed), ``drain`` (stop serving) and ``reload``."""

    def __init__(self, master: MasterView) -> None:
        super().__init__(master)
        self.master = master

    async def answer(self, line: bytes) -> tuple[bytes, Callable[[], None] | None]:
        """The encoded answer to one request line (see the class docstring)."""
        request = _parse(line)
        if isinstance(request, str):
            return _encode({"error": request}), None
        if request.get("cmd") == "status":
            # One status at a time, encoded in chunks (see ControlEndpoint.answer).
            async with self._building:
                doc, after = await self._respond(request, line)
                if "error" in doc:
                    return _encode(doc), after
                return await encode_document(doc), after
        doc, after = await self._respond(request, line)
        return _encode(doc), after

    async def _respond(
        self, request: dict[str, Any], line: bytes
    ) -> tuple[dict[str, Any], Callable[[], None] | None]:
        cmd = request.get("cmd")
        if cmd == "status":
            try:
                offset, limit = request.get("offset", 0), request.get("limit", DEFAULT_LIMIT)
                return await status_document(self.master, offset=offset, limit=limit), None
            except ValueError as exc:
                return {"error": str(exc)}, None
        if cmd == "statistics":
            doc = await status_document(self.master, limit=0)
            return {"pid": doc["pid"], "state": doc["state"], "statistics": doc["statistics"]}, None
        if cmd == "reload":
            return await self._reload(), None
        if cmd == "drain":
            return await self._drain_all(request)
        choices = ", ".join(MASTER_COMMANDS)
        return {
            "error": f'expected {{"cmd": ...}} with cmd one of {choices}, got {line[:200]!r}'
        }, None

    async def _reload(self) -> dict[str, Any]:
        attempt = await self.master.reload("control")
        if attempt is None:
            return {"ok": True, "queued": True, "generation": self.master.current.number}  # type: ignore[union-attr]  # serving
        if not attempt.ok:
            return {"error": f"reload failed: {attempt.reason}", "generation": attempt.generation}
        return {"ok": True, "generation": attempt.generation}

    async def _drain_all(
        self, request: dict[str, Any]
    ) -> tuple[dict[str, Any], Callable[[], None] | None]:
        grace = request.get("grace", self.master.config.timeouts.grace)
        valid = grace is None or (
            isinstance(grace, int | float)
            and not isinstance(grace, bool)
            and math.isfinite(grace)
            and grace >= 0
        )
        if not valid:
            return {"error": f"grace: expected seconds >= 0 or null, got {grace!r}"}, None
        reports = await worker_reports(self.master, "statistics")
        active = sum(int((r.doc or {}).get("statistics", {}).get("active", 0)) for r in reports)
        answer = {"ok": True, "state": "draining", "active": active, "grace": grace}

        def start_drain() -> None:
            logger.info(
                "control: drain requested, %d connection(s), grace %s",
                active,
                "inf" if grace is None else f"{grace:g} s",
            )
            self.master.stop("control", math.inf if grace is None else float(grace))

        return answer, start_drain


def metrics_source(master: MasterView) -> tuple[Callable[[], Iterator[Any]], Any]:
    """A statistics source over every worker (labels ``generation`` and ``worker``)
    and the refresh that asks them, for the metrics endpoint."""
    cache: list[tuple[dict[str, str], Any]] = []

    async def refresh() -> None:
        entries = []
        for report in await worker_reports(master, "statistics"):
            stats = statistics_from(report.doc) if report.doc is not None else None
            if stats is None:
                continue
            labels = {
                "backend": stats.backend,
                "generation": str(report.generation),
                "worker": str(report.worker.index),
            }
            entries.append((labels, stats))
        cache[:] = entries

    def source() -> Iterator[Any]:
        yield from cache

    return source, refresh


async def start_endpoints(nursery: trio.Nursery, master: MasterView) -> None:
    """Start the master's ``--control`` and ``--metrics`` endpoints in ``nursery``."""
    control = master.options.get("control")
    if control is not None:
        address = await nursery.start(
            lambda task_status: serve_control(
                master, control, endpoint=MasterControl(master), task_status=task_status
            ),
            name=f"triosrv control endpoint unix:{control}",
        )
        logger.info("control socket on %s", address)
    metrics = master.options.get("metrics")
    if metrics is not None:
        from prometheus_client import ProcessCollector
        from prometheus_client.registry import CollectorRegistry

        from .diagnostics._metrics import StatisticsCollector, serve_metrics

        source, refresh = metrics_source(master)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatisticsCollector(source))
        ProcessCollector(registry=registry)
        url = await nursery.start(
            lambda task_status: serve_metrics(
                master, metrics, registry=registry, refresh=refresh, task_status=task_status
            ),
            name="triosrv metrics endpoint",
        )
        logger.info("metrics on %s", url)
