"""The control endpoint: newline-delimited JSON over a Unix socket.

A running server answers requests on a Unix socket (file mode 0600: only its user
may connect). Each request is one JSON object on one line; each answer is one JSON
object on one line; a client may send several requests on one connection.

=====================================  ==============================================
request                                answer
=====================================  ==============================================
``{"cmd": "status"}``                  the status document (see ``_status.py``);
                                       ``"offset"`` and ``"limit"`` page through
                                       the connections (default 0 and 1000)
``{"cmd": "statistics"}``              ``{"pid": ..., "state": ..., "statistics":
                                       {...}}``: the counters only, cheap to ask
``{"cmd": "drain", "grace": 5}``       ``{"ok": true, "state": "draining", ...}``;
                                       the graceful shutdown starts (``grace`` is
                                       optional: the configured one; null: for ever)
anything else                          ``{"error": "..."}``; the server is not
                                       disturbed and the connection stays usable
=====================================  ==============================================

The endpoint runs in the nursery that runs the server and ends with it; nothing a
client sends can end the server (see ``_serving.py``). A client that takes longer than
``CONTROL_IDLE`` seconds to send a request, or ``_serving.WRITE_TIMEOUT`` to read an
answer, or sends a line longer than ``MAX_REQUEST`` bytes, is disconnected; at most
``MAX_CLIENTS`` are served at once, and when all are taken a newcomer evicts the
client that has kept us waiting longest (so clients that never read cannot lock the
operator out).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._config import BindSpec
from .._isolation import rate_limited
from .._listeners import open_listeners
from ._errors import DiagnosticsError
from ._serving import (
    ClientSlot,
    ClientSlots,
    accept_loop,
    guard_endpoint,
    send_bounded,
    serve_isolated,
)
from ._status import DEFAULT_LIMIT, _plain, build_status_document

logger = logging.getLogger("triosrv")

CONTROL_IDLE = 30.0
MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 16
# A status document for 100k connections is tens of MB; far more is not an answer.
MAX_ANSWER = 256 * 1024 * 1024
COMMANDS = ("status", "drain", "statistics")


class _LineReader:
    """Lines from a stream, each at most ``limit`` bytes (without the newline)."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._buffer = bytearray()

    async def readline(self) -> bytes | None:
        """The next line without its newline; None at EOF. ValueError if too long."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end > self._limit or (end < 0 and len(self._buffer) > self._limit):
                raise ValueError(f"line longer than {self._limit} bytes")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            start = len(self._buffer)
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def _parse_grace(request: dict[str, Any], default: float | None) -> float | None:
    if "grace" not in request:
        return default
    grace: object = request["grace"]
    if grace is None:
        return None
    if (
        isinstance(grace, int | float)
        and not isinstance(grace, bool)
        and math.isfinite(grace)
        and grace >= 0
    ):
        return float(grace)
    raise ValueError(f"grace: expected seconds >= 0 or null, got {grace!r}")


def _parse(line: bytes) -> dict[str, Any] | str:
    # Peer input: anything json.loads can raise on it is the peer's mistake, not
    # ours -- a malformed line, invalid UTF-8, nesting deeper than the recursion
    # limit (RecursionError), an integer of more than 4300 digits (ValueError).
    try:
        request = json.loads(line)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        return f"malformed request, expected one JSON object per line: {reason}"
    if not isinstance(request, dict):
        return f"expected a JSON object, got {type(request).__name__}"
    return request


class ControlEndpoint:
    """Answers control requests about one server (see the module docstring)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.started_at = trio.current_time()
        self.started_wall = time.time()
        self.slots = ClientSlots(MAX_CLIENTS, what="control")
        # One status document is built at a time: each yields between chunks, and
        # with one builder the connections being served wait behind at most one
        # chunk, not one chunk per poller (four pollers at once were four chunks).
        self._building = trio.Lock()

    async def answer(self, line: bytes) -> tuple[bytes, Callable[[], None] | None]:
        """The encoded answer to one request line, and what to do once it is sent."""
        request = _parse(line)
        if isinstance(request, str):
            return _encode({"error": request}), None
        cmd = request.get("cmd")
        if cmd == "status":
            try:
                async with self._building:
                    encoded = await build_status_document(
                        self.server,
                        started_at=self.started_at,
                        started_wall=self.started_wall,
                        offset=request.get("offset", 0),
                        limit=request.get("limit", DEFAULT_LIMIT),
                    )
            except ValueError as exc:
                return _encode({"error": str(exc)}), None
            return encoded, None
        if cmd == "statistics":
            stats = _plain(attrs.asdict(self.server.statistics()))
            return _encode({"pid": os.getpid(), "state": stats["state"], "statistics": stats}), None
        if cmd == "drain":
            answer, after = self._drain(request)
            return _encode(answer), after
        choices = ", ".join(COMMANDS)
        return _encode(
            {"error": f'expected {{"cmd": ...}} with cmd one of {choices}, got {line[:200]!r}'}
        ), None

    def _drain(self, request: dict[str, Any]) -> tuple[dict[str, Any], Callable[[], None] | None]:
        server = self.server
        try:
            grace = _parse_grace(request, server.config.timeouts.grace)
        except ValueError as exc:
            return {"error": str(exc)}, None
        active = server.statistics().active
        answer = {"ok": True, "state": "draining", "active": active, "grace": grace}

        def start_drain() -> None:
            logger.info(
                "control: drain requested, %d connection(s), grace %s",
                active,
                "inf" if grace is None else f"{grace:g} s",
            )
            server.shutdown(math.inf if grace is None else grace)

        # The answer goes out before the drain starts, so the client hears it even
        # when the drain is over (and this endpoint cancelled) a moment later.
        return answer, start_drain

    async def serve_client(self, stream: trio.SocketStream) -> None:
        """Answer one client's requests until it closes, idles or misbehaves."""
        await serve_isolated(
            self.slots,
            self._converse,
            stream,
            refuse=_encode({"error": "too many control clients, all busy; try again"}),
        )

    async def _converse(self, slot: ClientSlot, stream: trio.SocketStream) -> None:
        reader = _LineReader(stream, MAX_REQUEST)
        while True:
            slot.waiting()
            with trio.move_on_after(CONTROL_IDLE):
                try:
                    line = await reader.readline()
                except ValueError as exc:
                    await send_bounded(slot, stream, _encode({"error": str(exc)}))
                    return
            slot.working()
            if line is None:  # EOF, or idle too long (the scope was cancelled)
                return
            encoded, after = await self.answer(line)
            if encoded.startswith(b'{"error":'):
                logger.warning(
                    "control: %s",
                    str(json.loads(encoded)["error"])[:300],  # the text, not its JSON
                    extra=rate_limited("control_error"),
                )
            try:
                if not await send_bounded(slot, stream, encoded):
                    return
            finally:
                if after is not None:
                    after()


async def serve_control(
    server: Any,
    path: str,
    *,
    endpoint: ControlEndpoint | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control endpoint for ``server`` on the Unix socket ``path``.

    ``endpoint`` answers instead of a plain :class:`ControlEndpoint` of ``server``
    (the master of ``triosrv listen`` passes its own).

    Use it in the nursery that runs the server, and cancel it when the server is done::

        server = await nursery.start(triosrv.serve, handler, config)
        address = await nursery.start(serve_control, server, "/run/triosrv.sock")

    The socket file gets mode 0600; a stale one from a dead server is replaced.
    ``started`` reports ``unix:PATH``. Runs until cancelled; then the socket is closed
    and its file removed. Raises :class:`~triosrv.BindError` if it cannot bind.
    """
    listener = open_listeners([BindSpec("unix", path=path)], unix_mode=0o600)[0]
    endpoint = endpoint or ControlEndpoint(server)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(listener.address)
            await guard_endpoint(
                "control",
                functools.partial(
                    accept_loop, listener.sock, nursery, endpoint.serve_client, what="control"
                ),
            )
    finally:
        listener.close()


def _connect_error(path: str, exc: OSError) -> DiagnosticsError:
    if exc.errno == errno.ENOENT:
        reason = "no such socket (is the server running with --control?)"
    elif exc.errno == errno.ECONNREFUSED:
        reason = "nobody is listening (the server is gone; the socket file is stale)"
    elif exc.errno == errno.EACCES:
        reason = "permission denied (the socket is mode 0600: run as the server's user)"
    else:
        reason = (exc.strerror or str(exc)).lower()
    return DiagnosticsError(f"cannot reach the control socket {path}: {reason}")


async def control_request(
    path: str, request: dict[str, Any], *, timeout: float = 10.0
) -> dict[str, Any]:
    """Send one request to the control socket at ``path``; return the answer.

    An ``{"error": ...}`` answer is returned as it is. Raises
    :class:`DiagnosticsError` with one line if nobody answers within ``timeout``
    seconds, the socket is missing or dead, or the answer is not JSON.
    """
    try:
        stream = await trio.open_unix_socket(path)
    except OSError as exc:
        raise _connect_error(path, exc) from None
    async with stream:
        try:
            with trio.fail_after(timeout):
                await stream.send_all(_encode(request))
                line = await _LineReader(stream, MAX_ANSWER).readline()
        except trio.TooSlowError:
            raise DiagnosticsError(f"no answer on {path} within {timeout:g} s") from None
        except (trio.BrokenResourceError, ValueError) as exc:
            raise DiagnosticsError(f"control connection {path} failed: {exc}") from None
    if line is None:
        raise DiagnosticsError(f"the server closed {path} without answering")
    try:
        answer = json.loads(line)
    except (ValueError, RecursionError) as exc:
        # Not JSON, not UTF-8, an integer past 4300 digits, nesting past the
        # recursion limit: whoever listens on ``path`` is not a triosrv server.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise DiagnosticsError(f"the answer on {path} is not JSON: {reason}") from None
    if not isinstance(answer, dict):
        raise DiagnosticsError(f"the answer on {path} is not a JSON object")
    return answer


async def watch_status(
    path: str,
    interval: float,
    show: Callable[[dict[str, Any]], None],
    *,
    request: dict[str, Any] | None = None,
) -> None:
    """Ask for the status every ``interval`` seconds and pass it to ``show``, until
    cancelled. ``request`` is the status request (default ``{"cmd": "status"}``; add
    ``offset``/``limit`` for another page). Raises :class:`DiagnosticsError` when the
    server stops answering."""
    while True:
        answer = await control_request(path, request or {"cmd": "status"})
        if "error" in answer:
            raise DiagnosticsError(f"server: {answer['error']}")
        show(answer)
        await trio.sleep(interval)
