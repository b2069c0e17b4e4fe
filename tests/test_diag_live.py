"""The issue's checks, end to end: a real ``triosrv listen --control`` process holding
20 connections, inspected with ``triosrv status``, ``diag fds`` and the metrics."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from triosrv.diagnostics import TaskNode, count_tasks

from .diag_helpers import live_server, run_triosrv, triosrv_json

CLIENTS = 20


def serve_task(tree: TaskNode) -> TaskNode:
    stack = [tree]
    while stack:
        node = stack.pop()
        if node["name"] == "triosrv._server.serve":
            return node
        stack.extend(t for n in node["nurseries"] for t in n["tasks"])
    raise AssertionError("no server task in the tree")


async def test_live_status_fds_and_drain_with_20_connections() -> None:
    async with live_server("--grace", "5") as server:
        assert stat.S_IMODE(os.stat(server.control).st_mode) == 0o600
        clients = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(CLIENTS)]
        try:
            for client in clients:
                await client.send_all(b"ping")
                assert await client.receive_some() == b"ping"
            peers = {"{}:{}".format(*c.socket.getsockname()) for c in clients}

            doc = await triosrv_json("status", "--control", server.control)
            assert {c["peer"] for c in doc["connections"]} == peers
            assert all(c["next_deadline"] == "idle" for c in doc["connections"])
            assert all(0 < c["deadline_in"] <= 60 for c in doc["connections"])
            tree = serve_task(doc["task_tree"])
            # The document lists at most TREE_MAX_TASKS tasks per nursery and counts
            # the rest: the connection nursery holds the clients and the keeper.
            [conns] = [
                n
                for t in _walk(tree)
                for n in t["nurseries"]
                if n["label"] == "triosrv connection nursery"
            ]
            assert len(conns["tasks"]) + conns.get("more", 0) == CLIENTS + 1
            assert 0 < count_tasks(tree, "triosrv connection ") <= CLIENTS
            assert count_tasks(tree, f"triosrv listener tcp://127.0.0.1:{server.port}") == 1

            fds = await triosrv_json("diag", "fds", "--pid", str(server.process.pid))
            tcp = [fd for fd in fds["fds"] if fd["proto"] == "tcp"]
            assert [fd["state"] for fd in tcp].count("LISTEN") == 1
            assert {fd["remote"] for fd in tcp if fd["state"] == "ESTABLISHED"} == peers

            drained = await run_triosrv("status", "--control", server.control, "--drain")
            assert drained.stdout.decode().strip() == "draining 20 connection(s), grace 5 s"
            # Each echo handler sees its peer's EOF and ends within grace.
            for client in clients:
                await client.send_eof()
            assert await server.wait_exit(10) == 0
        finally:
            for client in clients:
                await client.aclose()
    assert b"20 connection(s) finished within grace, 0 cancelled" in server.log


async def test_live_warn_blocking_names_the_connection_and_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sleepy.py").write_text(
        textwrap.dedent(
            """
            import time

            async def handle(conn):
                async for chunk in conn:
                    time.sleep(0.3)  # real sleep: the blocking call the detector must find
                    await conn.send_all(chunk)
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    args = ("--handler", "sleepy:handle", "--warn-blocking", "0.1", "--metrics", "127.0.0.1:0")
    async with live_server(*args) as server:
        await server.read_log_until(b"metrics on http://")
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as client:
            await client.send_all(b"x")
            assert await client.receive_some() == b"x"
            peer = "{}:{}".format(*client.socket.getsockname())
            await server.read_log_until(b"held the event loop")
        doc = await triosrv_json("status", "--control", server.control)
        url = server.logged_value(b"metrics on ")
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        async with await trio.open_tcp_stream("127.0.0.1", port) as http:
            await http.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = bytearray()
            while chunk := await http.receive_some():
                response += chunk
    assert f"blocking: task 'triosrv connection 1 from {peer}' held the event loop" in (
        server.log.decode()
    )
    assert doc["statistics"]["blocking_warnings"] == 1
    assert doc["config"]["warn_blocking"] == 0.1
    head, _, body = bytes(response).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    [sample] = families["triosrv_blocking_warnings"].samples
    assert sample.value == 1


def _walk(node: TaskNode) -> list[TaskNode]:
    found = [node]
    for nursery in node["nurseries"]:
        for task in nursery["tasks"]:
            found += _walk(task)
    return found
