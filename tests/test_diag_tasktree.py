"""Library access: connection snapshots with their next deadline, and the task tree."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

import triosrv
from triosrv.diagnostics import (
    ConnectionSnapshot,
    TaskNode,
    connection_snapshots,
    count_tasks,
    render_tree,
    snapshot_connection,
    task_tree,
)
from triosrv.diagnostics._tasktree import server_nursery_labels

from .helpers import connect, running_server


def find(node: TaskNode, prefix: str) -> TaskNode:
    if node["name"].startswith(prefix):
        return node
    for nursery in node["nurseries"]:
        for task in nursery["tasks"]:
            try:
                return find(task, prefix)
            except LookupError:
                pass
    raise LookupError(prefix)


async def test_snapshot_idle_deadline_counts_down_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = {"binds": (), "timeouts": triosrv.Timeouts(idle=10, write=5, lifetime=100)}
    async with running_server(**config) as server:
        client, theirs = trio.testing.memory_stream_pair()
        await server.add_stream(theirs, peer="test:1")
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(3)  # not a real sleep: autojump_clock
        [snap] = connection_snapshots(server)
        assert (snap.peer, snap.waiting, snap.next_deadline) == ("test:1", "receive", "idle")
        assert snap.deadline_in == pytest.approx(7)
        assert snap.idle_for == pytest.approx(3)
        assert snap.age == pytest.approx(3)
        await client.send_all(b"abc")
        assert await client.receive_some() == b"abc"
        await trio.testing.wait_all_tasks_blocked()
        [snap] = connection_snapshots(server)
        assert (snap.bytes_received, snap.bytes_sent) == (3, 3)
        assert snap.deadline_in == pytest.approx(10)  # a new wait: the idle clock restarted
        await client.aclose()


def test_snapshot_of_any_connection_like_object() -> None:
    @attrs.define
    class OtherBackendConnection:
        id: int = 7
        peer: str = "10.0.0.1:5"
        local: str = "10.0.0.2:80"
        started_at: float = 100.0
        bytes_received: int = 1
        bytes_sent: int = 2
        draining: bool = True

    snap = snapshot_connection(OtherBackendConnection(), triosrv.Timeouts(), now=104.0)
    assert snap == ConnectionSnapshot(
        id=7,
        peer="10.0.0.1:5",
        local="10.0.0.2:80",
        age=4.0,
        idle_for=0.0,
        waiting=None,
        bytes_received=1,
        bytes_sent=2,
        draining=True,
        next_deadline=None,
        deadline_in=None,
    )


async def test_snapshot_lifetime_when_not_waiting() -> None:
    conn = triosrv.Connection(trio.testing.memory_stream_pair()[0], peer="p", id=1)
    now = conn.started_at + 2
    snap = snapshot_connection(conn, triosrv.Timeouts(idle=None, lifetime=5), now)
    assert (snap.next_deadline, snap.deadline_in, snap.waiting) == ("lifetime", 3.0, None)
    none = snapshot_connection(conn, triosrv.Timeouts(idle=None, lifetime=None), now)
    assert (none.next_deadline, none.deadline_in) == (None, None)


async def test_tasktree_shows_listener_and_connection_tasks_under_the_server() -> None:
    async with running_server() as server:
        clients = [await connect(server) for _ in range(3)]
        try:
            for client in clients:
                await client.send_all(b"x")
                assert await client.receive_some() == b"x"
            await trio.testing.wait_all_tasks_blocked()  # every handler back in receive
            tree = task_tree(labels=server_nursery_labels(server))
            serve_task = find(tree, "triosrv._server.serve")
            labels = {n["label"]: n for n in serve_task["nurseries"]}
            assert set(labels) == {"triosrv connection nursery", "triosrv listener nursery"}
            conns = labels["triosrv connection nursery"]["tasks"]
            names = [task["name"] for task in conns]
            peers = [c.socket.getsockname() for c in clients]
            assert names[:3] == [
                f"triosrv connection {i + 1} from {host}:{port}"
                for i, (host, port) in enumerate(peers)
            ]
            assert names[3] == "triosrv deadline keeper"
            assert all("receive" in (task["awaiting"] or "") for task in conns[:3])
            [listener] = labels["triosrv listener nursery"]["tasks"]
            assert listener["name"] == f"triosrv listener {server.addresses[0]}"
            assert count_tasks(serve_task, "triosrv connection ") == 3
        finally:
            for client in clients:
                await client.aclose()


async def test_tasktree_of_a_subtree_and_its_text() -> None:
    async def child() -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child, name="worker 10")
        nursery.start_soon(child, name="worker 9")
        await trio.testing.wait_all_tasks_blocked()
        tree = task_tree(trio.lowlevel.current_task())
        nursery.cancel_scope.cancel()
    node = tree["nurseries"][-1]  # pytest-trio's own nursery comes first
    assert [t["name"] for t in node["tasks"]] == ["worker 9", "worker 10"]  # natural order
    assert node["tasks"][0]["awaiting"] is not None
    assert "child (test_diag_tasktree.py:" in node["tasks"][0]["awaiting"]
    lines = render_tree(tree).splitlines()
    assert lines[-3] == "`- nursery"
    assert lines[-2].startswith("   +- worker 9  [child (")
    assert lines[-1].startswith("   `- worker 10  [child (")


async def test_tasktree_reports_a_nursery_deadline(autojump_clock: trio.testing.MockClock) -> None:
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.deadline = trio.current_time() + 4
            nursery.start_soon(trio.sleep_forever, name="sleeper")
            await trio.testing.wait_all_tasks_blocked()
            node = task_tree(trio.lowlevel.current_task())["nurseries"][-1]
            assert node["deadline_in"] == pytest.approx(4)
            assert not node["cancel_called"]
            assert "deadline in 4.0s" in render_tree(task_tree(trio.lowlevel.current_task()))


def test_tasktree_text_elides_huge_nurseries() -> None:
    tasks: list[TaskNode] = [
        {"name": f"triosrv connection {i}", "awaiting": None, "nurseries": []}
        for i in range(1, 151)
    ]
    tree: TaskNode = {
        "name": "root",
        "awaiting": None,
        "nurseries": [{"label": None, "cancel_called": True, "deadline_in": None, "tasks": tasks}],
    }
    lines = render_tree(tree).splitlines()
    assert lines[1] == "`- nursery (cancelled)"
    assert len(lines) == 2 + 99 + 1
    assert lines[-1] == "   `- ... and 51 more tasks"
    assert count_tasks(tree, "triosrv connection ") == 150
