"""Prometheus metrics over HTTP: scraped with a real HTTP client, parsed by
prometheus-client's own parser."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import h11
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import triosrv
from triosrv.diagnostics import serve_metrics

from .helpers import connect, running_server


@contextlib.asynccontextmanager
async def server_with_metrics(**config: Any) -> AsyncIterator[tuple[triosrv.Server, int]]:
    async with running_server(**config) as server, trio.open_nursery() as nursery:
        url = await nursery.start(serve_metrics, server, "127.0.0.1:0")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        yield server, int(url.rsplit(":", 1)[1].split("/")[0])
        nursery.cancel_scope.cancel()


async def http_requests(port: int, *requests: h11.Request) -> list[tuple[h11.Response, bytes]]:
    """Send requests one after another on one keep-alive connection (h11 client)."""
    out = []
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        conn = h11.Connection(h11.CLIENT)
        for request in requests:
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            response, body = None, bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some())
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert response is not None
            out.append((response, bytes(body)))
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
    return out


def get(target: str = "/metrics", method: str = "GET", **headers: str) -> h11.Request:
    return h11.Request(
        method=method, target=target, headers=[("host", "127.0.0.1"), *headers.items()]
    )


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_scrape_parses_and_counts() -> None:
    async with server_with_metrics() as (server, port):
        async with await connect(server) as client:
            await client.send_all(b"hello")
            assert await client.receive_some() == b"hello"
            [(response, body)] = await http_requests(port, get())
        assert response.status_code == 200
        content_type = dict(response.headers)[b"content-type"].decode()
        assert content_type.startswith("text/plain")
        found = samples(body)
        trio_label = (("backend", "trio"),)
        assert found[("triosrv_connections_active", trio_label)] == 1
        assert found[("triosrv_connections_accepted_total", trio_label)] == 1
        assert found[("triosrv_received_bytes_total", trio_label)] == 5
        assert found[("triosrv_blocking_warnings_total", trio_label)] == 0
        for kind in ("idle", "write", "lifetime"):
            assert found[("triosrv_timeouts_total", (("backend", "trio"), ("kind", kind)))] == 0
        assert found[("triosrv_state", (("backend", "trio"), ("state", "serving")))] == 1
        assert found[("triosrv_state", (("backend", "trio"), ("state", "draining")))] == 0
        assert found[("process_open_fds", ())] > 0


async def test_metrics_keep_alive_404_405_and_head() -> None:
    async with server_with_metrics() as (_server, port):
        answers = await http_requests(
            port, get(), get("/nowhere"), get(method="POST"), get(method="HEAD"), get()
        )
    assert [r.status_code for r, _ in answers] == [200, 404, 405, 200, 200]
    assert answers[1][1] == b"not found: the metrics are at /metrics\n"
    assert dict(answers[2][0].headers)[b"allow"] == b"GET, HEAD"
    assert answers[3][1] == b""  # HEAD: headers only


async def test_metrics_openmetrics_when_the_scraper_asks() -> None:
    async with server_with_metrics() as (_server, port):
        [(response, body)] = await http_requests(
            port, get(accept="application/openmetrics-text; version=1.0.0")
        )
    assert dict(response.headers)[b"content-type"].startswith(b"application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_metrics_malformed_request_gets_400_and_serving_goes_on() -> None:
    async with server_with_metrics() as (server, port):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            reply = bytearray()
            while chunk := await stream.receive_some():
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400 ")
        [(response, _)] = await http_requests(port, get())
        assert response.status_code == 200
        assert server.state == "serving"


async def test_metrics_bind_must_be_host_port() -> None:
    async with running_server() as server:
        with pytest.raises(triosrv.ConfigError, match="metrics: expected HOST:PORT"):
            await serve_metrics(server, "unix:/tmp/x.sock")


async def test_metrics_registry_carries_extra_labels() -> None:
    from prometheus_client import generate_latest

    from triosrv.diagnostics import metrics_registry

    async with running_server() as server:
        body = generate_latest(metrics_registry(server, labels={"worker": "2"}))
    found = samples(body)
    labels = (("backend", "trio"), ("worker", "2"))
    assert found[("triosrv_connections_accepted_total", labels)] == 0
    assert found[("triosrv_state", tuple(sorted((*labels, ("state", "serving")))))] == 1
