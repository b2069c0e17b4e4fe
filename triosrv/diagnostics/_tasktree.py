"""The live trio task tree as plain data (dicts, lists, strings, numbers).

trio knows every task and nursery (``Task.child_nurseries``,
``Nursery.child_tasks``); this walks them from the root task, or any task, and says
for each task where it is suspended -- the innermost frame outside trio itself, so a
connection task shows the handler line or triosrv's receive, not trio's scheduler.

The result is JSON-ready::

    {"name": "triosrv listener tcp://127.0.0.1:8888",
     "awaiting": "_accept_loop (_server.py:214)",
     "nurseries": [{"label": None, "cancel_called": False, "deadline_in": None,
                    "tasks": [...]}]}
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict

import trio

from .._blocking_detector import awaiting_location

# The text view lists at most this many tasks per nursery.
TEXT_MAX_TASKS = 100
_DIGITS = re.compile(r"(\d+)")


class NurseryNode(TypedDict):
    """A nursery: an optional ``label``, its cancel scope's state, its child tasks
    (and, when the walk was capped, how many ``more`` it did not list)."""

    label: str | None
    cancel_called: bool
    deadline_in: float | None
    tasks: list[TaskNode]
    more: NotRequired[int]


class TaskNode(TypedDict):
    """A task: its ``name``, where it ``awaits`` (or None), its child nurseries."""

    name: str
    awaiting: str | None
    nurseries: list[NurseryNode]


def _nursery_node(
    nursery: trio.Nursery, labels: Mapping[int, str], now: float, max_tasks: int | None
) -> NurseryNode:
    scope = nursery.cancel_scope
    deadline = scope.deadline
    children = nursery.child_tasks
    if max_tasks is not None and len(children) > max_tasks:
        # A nursery of 10,000 connections: list some, count the rest. Which ones is
        # arbitrary (child_tasks is a set); sorting them all would cost more than the
        # rest of the walk.
        shown = sorted(itertools.islice(children, max_tasks), key=_natural_key)
    else:
        shown = sorted(children, key=_natural_key)
    node: NurseryNode = {
        "label": labels.get(id(nursery)),
        "cancel_called": scope.cancel_called,
        "deadline_in": None if math.isinf(deadline) else deadline - now,
        "tasks": [_task_node(child, labels, now, max_tasks) for child in shown],
    }
    if len(shown) < len(children):
        node["more"] = len(children) - len(shown)
    return node


def _natural_key(task: trio.lowlevel.Task) -> list[tuple[int, int | str]]:
    # "connection 9" before "connection 10"; child_tasks is a set, so sort somehow.
    return [(0, int(part)) if part.isdigit() else (1, part) for part in _DIGITS.split(task.name)]


def _task_node(
    task: trio.lowlevel.Task, labels: Mapping[int, str], now: float, max_tasks: int | None
) -> TaskNode:
    return {
        "name": task.name,
        "awaiting": awaiting_location(task),
        "nurseries": [_nursery_node(n, labels, now, max_tasks) for n in task.child_nurseries],
    }


def task_tree(
    root: trio.lowlevel.Task | None = None,
    *,
    labels: Mapping[int, str] | None = None,
    max_tasks: int | None = None,
) -> TaskNode:
    """The tree of tasks and nurseries under ``root`` (default: the run's root task).

    ``labels`` maps ``id(nursery)`` to a name for that nursery (see
    :func:`server_nursery_labels`). With ``max_tasks``, a nursery lists at most that
    many of its tasks and counts the others in ``"more"``, so the walk costs the same
    with 10,000 connections as with 100. Call from inside a trio run; the walk does
    not await, so the tree is one consistent moment.
    """
    now = trio.current_time()
    start = trio.lowlevel.current_root_task() if root is None else root
    if start is None:  # pragma: no cover - inside a run there is always a root task
        raise RuntimeError("task_tree() must be called inside a trio run")
    return _task_node(start, labels or {}, now, max_tasks)


def server_nursery_labels(server: Any) -> dict[int, str]:
    """Names for a server's own nurseries, for :func:`task_tree`'s ``labels``."""
    labels: dict[int, str] = {}
    conn_nursery = getattr(server, "_conn_nursery", None)
    if conn_nursery is not None:
        labels[id(conn_nursery)] = "triosrv connection nursery"
    listen_scope = getattr(server, "_listen_scope", None)
    if listen_scope is not None:
        # The listener nursery is only known by its cancel scope: find it under the
        # connection nursery's tasks (the server's own task owns both).
        for nursery in _nurseries_under(trio.lowlevel.current_root_task()):
            if nursery.cancel_scope is listen_scope:
                labels[id(nursery)] = "triosrv listener nursery"
    return labels


def _nurseries_under(task: trio.lowlevel.Task | None) -> list[trio.Nursery]:
    found: list[trio.Nursery] = []
    stack = [task] if task is not None else []
    while stack:
        current = stack.pop()
        for nursery in current.child_nurseries:
            found.append(nursery)
            stack.extend(nursery.child_tasks)
    return found


def count_tasks(node: TaskNode, prefix: str = "") -> int:
    """How many tasks in the tree have a name starting with ``prefix``."""
    own = 1 if node["name"].startswith(prefix) else 0
    return own + sum(count_tasks(t, prefix) for n in node["nurseries"] for t in n["tasks"])


def render_tree(node: TaskNode) -> str:
    """The tree as indented text, one line per task and per nursery."""
    lines: list[str] = []
    _render_task(node, "", "", lines)
    return "\n".join(lines)


def _render_task(node: TaskNode, first: str, rest: str, lines: list[str]) -> None:
    where = f"  [{node['awaiting']}]" if node["awaiting"] else ""
    lines.append(f"{first}{node['name']}{where}")
    nurseries = node["nurseries"]
    for i, nursery in enumerate(nurseries):
        last = i == len(nurseries) - 1
        _render_nursery(
            nursery, rest + ("`- " if last else "+- "), rest + ("   " if last else "|  "), lines
        )


def _render_nursery(node: NurseryNode, first: str, rest: str, lines: list[str]) -> None:
    facts = []
    if node["cancel_called"]:
        facts.append("cancelled")
    if node["deadline_in"] is not None:
        facts.append(f"deadline in {node['deadline_in']:.1f}s")
    extra = f" ({', '.join(facts)})" if facts else ""
    lines.append(f"{first}{node['label'] or 'nursery'}{extra}")
    tasks = node["tasks"]
    hidden = len(tasks) - TEXT_MAX_TASKS + node.get("more", 0)
    if hidden > 0:  # keep the text readable
        tasks = tasks[: TEXT_MAX_TASKS - 1]
    for i, task in enumerate(tasks):
        last = i == len(tasks) - 1 and hidden <= 0
        _render_task(
            task, rest + ("`- " if last else "+- "), rest + ("   " if last else "|  "), lines
        )
    if hidden > 0:
        unlisted = len(node["tasks"]) + node.get("more", 0) - len(tasks)
        lines.append(f"{rest}`- ... and {unlisted} more tasks")
