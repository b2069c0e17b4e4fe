"""Seeing inside: the machine's limits, a process's fds, a live server's state.

- :func:`system_facts` -- ``triosrv diag system``: versions, I/O manager,
  multiplexers, FD_SETSIZE, fd limits, backlog cap, port range, stdio.
- :func:`fd_table` -- ``triosrv diag fds``: a process's fds from /proc, with TCP
  addresses and states.
- :func:`connection_snapshots` and :func:`task_tree` -- a running server's
  connections (with their next deadline) and the live trio task tree, as plain data.
- :func:`serve_control` / :func:`control_request` -- the control endpoint behind
  ``triosrv status``.
- :class:`BlockingDetector` -- the instrument behind ``warn_blocking``.
- :func:`serve_metrics` / :func:`metrics_registry` -- Prometheus metrics (the
  ``metrics`` extra: prometheus-client and h11); imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._blocking_detector import BlockingDetector
from .._snapshots import ConnectionSnapshot, connection_snapshots, snapshot_connection
from ._control import ControlEndpoint, control_request, serve_control, watch_status
from ._errors import DiagnosticsError, require_extra
from ._fds import FdInfo, fd_summary, fd_table, render_fds
from ._status import render_status, status_document
from ._system import SystemFact, render_system, system_facts
from ._table import render_table
from ._tasktree import NurseryNode, TaskNode, count_tasks, render_tree, task_tree

if TYPE_CHECKING:
    from ._metrics import StatisticsCollector, metrics_registry, serve_metrics

_METRICS_NAMES = ("StatisticsCollector", "metrics_registry", "serve_metrics")


def __getattr__(name: str) -> Any:
    # The metrics names need the optional extra; importing them only when asked
    # keeps `import triosrv.diagnostics` working without it.
    if name in _METRICS_NAMES:
        require_extra("metrics", "prometheus_client", "h11")
        from . import _metrics

        return getattr(_metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BlockingDetector",
    "ConnectionSnapshot",
    "ControlEndpoint",
    "DiagnosticsError",
    "FdInfo",
    "NurseryNode",
    "StatisticsCollector",
    "SystemFact",
    "TaskNode",
    "connection_snapshots",
    "control_request",
    "count_tasks",
    "fd_summary",
    "fd_table",
    "metrics_registry",
    "render_fds",
    "render_status",
    "render_system",
    "render_table",
    "render_tree",
    "require_extra",
    "serve_control",
    "serve_metrics",
    "snapshot_connection",
    "status_document",
    "system_facts",
    "task_tree",
    "watch_status",
]
