"""Prometheus metrics: the server's statistics over HTTP, on a listener of its own.

The text format comes from prometheus-client (a custom ``Collector`` read by its
exposition code, which also negotiates OpenMetrics with the scraper) and the HTTP
parsing from h11: no hand-written format or parser. Both are the optional extra
``metrics`` (``pip install 'triosrv[metrics]'``).

The listener runs in the nursery that runs the server and ends with it; nothing a
client sends can end the server (see ``_serving.py``). It answers ``GET /metrics``
(and ``HEAD``), keeps connections alive as HTTP/1.1 scrapers expect, drops a client
that takes longer than ``HTTP_IDLE`` seconds to send a request or
``_serving.WRITE_TIMEOUT`` to read an answer, and serves at most ``MAX_CLIENTS`` at
once (a newcomer evicts the client blocked longest). Every scrape reads
``server.statistics()`` at that moment.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

import attrs
import h11
import trio
from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from .._config import parse_bind
from .._errors import ConfigError
from .._isolation import rate_limited
from .._listeners import open_listeners
from ._serving import (
    ClientSlot,
    ClientSlots,
    accept_loop,
    guard_endpoint,
    send_bounded,
    serve_isolated,
)

logger = logging.getLogger("triosrv")

HTTP_IDLE = 30.0
MAX_CLIENTS = 32
MAX_REQUEST_HEAD = 16 * 1024

#: What a statistics source yields: labels (the same names every time) and a
#: ServerStatistics-like object. A server with workers yields one pair per worker.
StatisticsSource = Callable[[], Iterable[tuple[Mapping[str, str], Any]]]

# (statistics field, metric name, counter or gauge, help)
_FIELDS = [
    ("active", "triosrv_connections_active", "gauge", "Connections being served now."),
    ("peak_active", "triosrv_connections_peak", "gauge", "Most connections served at once."),
    ("accepted", "triosrv_connections_accepted", "counter", "Connections accepted."),
    ("rejected", "triosrv_connections_rejected", "counter", "Connections refused when full."),
    ("completed", "triosrv_connections_completed", "counter", "Connections that ended."),
    ("broken", "triosrv_connections_broken", "counter", "Connections the peer reset."),
    ("shed", "triosrv_connections_shed", "counter", "Queued connections closed on EMFILE."),
    ("handler_errors", "triosrv_handler_errors", "counter", "Handler exceptions."),
    ("accept_errors", "triosrv_accept_errors", "counter", "accept() out-of-resource errors."),
    ("bytes_received", "triosrv_received_bytes", "counter", "Bytes received from peers."),
    ("bytes_sent", "triosrv_sent_bytes", "counter", "Bytes sent to peers."),
    (
        "blocking_warnings",
        "triosrv_blocking_warnings",
        "counter",
        "Task steps that held the event loop longer than warn_blocking.",
    ),
]
_KIND_DOCS = {
    "timeouts": "Connection timeouts fired, by kind (idle, write, lifetime, handshake, "
    "slow_receive).",
    "handshake_failures": "Connections closed before the handler, by kind.",
}
STATES = ("starting", "serving", "draining", "closed")


def server_source(server: Any, labels: Mapping[str, str] | None = None) -> StatisticsSource:
    """The statistics of one server, labelled with its backend and ``labels``
    (e.g. ``{"worker": "3"}`` in a worker process)."""
    all_labels = {"backend": str(getattr(server.config, "backend", "trio")), **(labels or {})}

    def source() -> Iterator[tuple[Mapping[str, str], Any]]:
        yield all_labels, server.statistics()

    return source


class StatisticsCollector(Collector):
    """A prometheus-client Collector over a :data:`StatisticsSource`."""

    def __init__(self, source: StatisticsSource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        """Build every metric family from one read of the source."""
        entries = list(self._source())
        names = sorted(entries[0][0]) if entries else []
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for field, name, kind, doc in _FIELDS:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            families[field] = cls(name, doc, labels=names)
        # Counters by kind (timeouts, handshake failures, ...): every Mapping field.
        by_kind: dict[str, CounterMetricFamily] = {}
        state = GaugeMetricFamily(
            "triosrv_state", "1 for the server's current state.", labels=[*names, "state"]
        )
        for labels, stats in entries:
            values = [labels[n] for n in names]
            for field in _other_counts(stats):
                if field not in families:  # a counter this module does not know yet
                    families[field] = CounterMetricFamily(
                        f"triosrv_{field}", f"ServerStatistics.{field}.", labels=names
                    )
            for field, family in families.items():
                family.add_metric(values, getattr(stats, field, 0))
            for field, counts in _mapping_fields(stats):
                if field not in by_kind:
                    doc = _KIND_DOCS.get(field, f"{field} by kind.")
                    by_kind[field] = CounterMetricFamily(
                        f"triosrv_{field}", doc, labels=[*names, "kind"]
                    )
                for kind, count in counts.items():
                    by_kind[field].add_metric([*values, str(kind)], count)
            for name in STATES:
                state.add_metric([*values, name], 1 if stats.state == name else 0)
        yield from families.values()
        yield from by_kind.values()
        yield state


def _other_counts(stats: Any) -> Iterator[str]:
    # Integer statistics that _FIELDS does not name (a backend's own counters) are
    # exported as counters under their own name rather than silently left out.
    if not attrs.has(type(stats)):
        return
    known = {field for field, *_ in _FIELDS}
    for field in attrs.fields(type(stats)):
        value = getattr(stats, field.name)
        if field.name not in known and isinstance(value, int) and not isinstance(value, bool):
            yield field.name


def _mapping_fields(stats: Any) -> Iterator[tuple[str, Mapping[str, int]]]:
    if not attrs.has(type(stats)):
        return
    for field in attrs.fields(type(stats)):
        value = getattr(stats, field.name)
        if isinstance(value, Mapping):
            yield field.name, value


def metrics_registry(server: Any, *, labels: Mapping[str, str] | None = None) -> CollectorRegistry:
    """A registry with ``server``'s statistics and this process's (fds, memory, CPU).

    ``labels`` are added to every triosrv metric. Expose the registry your own way,
    e.g. ``prometheus_client.generate_latest(registry)``.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatisticsCollector(server_source(server, labels)))
    ProcessCollector(registry=registry)
    return registry


def _choose_encoder(accept: str) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    # prometheus_client raises TypeError for an Accept whose version= is not a dotted
    # number ("version=x", "1.0.0-rc1"): peer input must not reach a library call
    # unguarded. An Accept we cannot read gets the plain text format, as no Accept does.
    try:
        return choose_encoder(accept)
    except Exception:
        return choose_encoder("")


def _request_path(target: bytes) -> bytes:
    # origin-form (/metrics?x) or absolute-form (http://host:port/metrics), which
    # RFC 9112 (3.2.2) says a server must accept, as a proxy in front may send it.
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    scheme, sep, rest = path.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https"):
        return b"/" + rest.partition(b"/")[2]
    return path


def _respond(conn: h11.Connection, request: h11.Request, registry: CollectorRegistry) -> bytes:
    path = _request_path(request.target)
    headers = [("content-type", "text/plain; charset=utf-8")]
    if request.method not in (b"GET", b"HEAD"):
        status, body = 405, b"only GET and HEAD\n"
        headers.append(("allow", "GET, HEAD"))
    elif path == b"/metrics":
        accept = next((v for k, v in request.headers if k == b"accept"), b"")
        encoder, content_type = _choose_encoder(accept.decode("latin-1"))
        try:
            status, body = 200, encoder(registry)
            headers = [("content-type", content_type)]
        except Exception:
            logger.exception("metrics: building the exposition failed")
            status, body = 500, b"internal error building the metrics; see the server log\n"
    else:
        status, body = 404, b"not found: the metrics are at /metrics\n"
    headers.append(("content-length", str(len(body))))
    response = h11.Response(
        status_code=status, headers=headers, reason=HTTPStatus(status).phrase.encode()
    )
    out = conn.send(response) or b""
    if request.method != b"HEAD":
        out += conn.send(h11.Data(data=body)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


async def _next_event(conn: h11.Connection, stream: trio.abc.ReceiveStream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(bytes(await stream.receive_some(65536)))


async def _receive_request(
    conn: h11.Connection, slot: ClientSlot, stream: trio.abc.ReceiveStream
) -> h11.Request | None:
    # One whole request (head and any body, which is skipped) within HTTP_IDLE: a
    # client that drips its request is dropped like a silent one. None: the client
    # is done, silent too long, or not speaking a request.
    slot.waiting()
    with trio.move_on_after(HTTP_IDLE):
        event = await _next_event(conn, stream)
        if not isinstance(event, h11.Request):
            return None  # ConnectionClosed (the scraper left), or a PAUSED cycle
        while not isinstance(await _next_event(conn, stream), h11.EndOfMessage):
            pass  # a GET has no body worth reading; skip whatever came
        slot.working()
        return event
    return None


class _MetricsEndpoint:
    def __init__(
        self, registry: CollectorRegistry, refresh: Callable[[], Awaitable[None]] | None
    ) -> None:
        self.registry = registry
        self.refresh = refresh
        self.slots = ClientSlots(MAX_CLIENTS, what="metrics")

    async def serve_client(self, stream: trio.SocketStream) -> None:
        await serve_isolated(self.slots, self._converse, stream)

    async def _converse(self, slot: ClientSlot, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            while True:
                request = await _receive_request(conn, slot, stream)
                if request is None:
                    return
                if self.refresh is not None:
                    # Bounded like the request: a worker too slow to answer is left
                    # out by the refresh itself (see _master_status.py).
                    await self.refresh()
                if not await send_bounded(slot, stream, _respond(conn, request, self.registry)):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            logger.info("metrics: bad request: %s", exc, extra=rate_limited("metrics_bad_request"))
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                body = f"bad request: {exc}\n".encode()
                response = h11.Response(
                    status_code=exc.error_status_hint,
                    headers=[("content-length", str(len(body))), ("connection", "close")],
                )
                await send_bounded(
                    slot,
                    stream,
                    (conn.send(response) or b"")
                    + (conn.send(h11.Data(data=body)) or b"")
                    + (conn.send(h11.EndOfMessage()) or b""),
                )


async def serve_metrics(
    server: Any,
    bind: str,
    *,
    labels: Mapping[str, str] | None = None,
    registry: CollectorRegistry | None = None,
    refresh: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``server``'s metrics over HTTP on ``bind`` (``HOST:PORT``) until cancelled.

    Use it in the nursery that runs the server::

        server = await nursery.start(triosrv.serve, handler, config)
        url = await nursery.start(serve_metrics, server, "127.0.0.1:9100")

    ``started`` reports the URL (``http://127.0.0.1:9100/metrics``, with the real
    port when 0 was asked for). ``labels`` go on every triosrv metric (a worker
    process passes ``{"worker": "N"}``). ``registry`` replaces the one made from
    ``server`` (the master of ``triosrv listen`` passes one over its workers), and
    ``refresh`` is awaited before each scrape is answered (it asks them). Raises
    :class:`~triosrv.BindError` if it cannot bind and :class:`~triosrv.ConfigError`
    for a malformed ``bind``.
    """
    spec = parse_bind(bind)
    if spec.kind != "tcp":
        raise ConfigError(f"metrics: expected HOST:PORT, got {bind!r}")
    listeners = open_listeners([spec])
    if registry is None:
        registry = metrics_registry(server, labels=labels)
    endpoint = _MetricsEndpoint(registry, refresh)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(
                    guard_endpoint,
                    "metrics",
                    functools.partial(
                        accept_loop,
                        listener.sock,
                        nursery,
                        endpoint.serve_client,
                        what="metrics",
                    ),
                    name=f"triosrv metrics listener {listener.address}",
                )
            task_status.started(listeners[0].address.replace("tcp://", "http://") + "/metrics")
    finally:
        for listener in listeners:
            listener.close()
