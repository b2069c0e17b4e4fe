"""minikv: a Redis-protocol (RESP2) key-value and pub/sub server on triosrv.

Run it::

    python examples/minikv.py --port 6380          # --port 0: any free port
    redis-cli -p 6380 SET greeting hello

It logs ``listening on tcp://HOST:PORT`` on stderr once it accepts, as
``triosrv listen`` does; SIGINT or SIGTERM drains the connections (``--grace``
seconds) and exits 0, a second signal cancels them at once.

What it is made of, as a library user would write it:

- ``triosrv.protocols.RespParser`` splits each connection's bytes into commands, and
  the ``encode_*`` functions build replies (sans-IO, shared with nothing else);
- ``minikv_commands.Session`` runs a command against the shared ``Store`` and
  ``Broker`` (``minikv_state.py``), sans-IO too: every reply is what Redis 7.0 sends;
- this file is the I/O: one handler per connection, served by ``triosrv.serve``.

A connection sends its replies itself until it subscribes. From then on, a second
task (the writer) sends what its bounded ``Outbox`` holds: replies and the messages
other connections publish. A publisher never waits for a subscriber: PUBLISH only
appends to each subscriber's outbox; a subscriber whose outbox goes past
``--pubsub-limit`` is cut (disconnected and counted), the others carry on.

With ``--backend epoll`` the key-value commands run in triosrv's epoll loop through
the same parser and sessions (a sans-IO ``Protocol``); SUBSCRIBE then answers an
error, since that design has no task to deliver messages with.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import trio
from minikv_commands import Session
from minikv_state import Broker, Outbox, Settings, Store

import triosrv
from triosrv.protocols import Protocol, RespParser

logger = logging.getLogger("triosrv")
# The most bytes one send takes from an outbox.
SEND_SIZE = 65536
# How often expired keys are swept (seconds), and how many at most per sweep.
SWEEP_INTERVAL = 0.1
SWEEP_LIMIT = 1000


def unix_ms() -> int:
    """The Store's clock: Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


class Server:
    """What every connection of one minikv server shares."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(unix_ms)
        self.broker = Broker()

    def new_session(self) -> tuple[Session, RespParser]:
        """A session and a request parser for a new connection."""
        settings = self.settings
        parser = RespParser(
            max_bulk_len=settings.max_bulk_len, max_query_buffer=settings.max_query_buffer
        )
        return Session(self.store, self.broker, settings), parser

    async def handle(self, conn: triosrv.Connection) -> None:
        """Serve one connection (the ``trio`` backend's handler)."""
        session, parser = self.new_session()
        try:
            async with trio.open_nursery() as nursery:
                wakeup = _Wakeup()
                session.outbox = Outbox(
                    clock=unix_ms,
                    hard=self.settings.pubsub_hard,
                    soft=self.settings.pubsub_soft,
                    soft_seconds=self.settings.pubsub_soft_seconds,
                    on_ready=wakeup.set,
                    on_cut=nursery.cancel_scope.cancel,
                )
                await _serve_requests(conn, session, parser, nursery, wakeup)
        finally:
            if session.channels:  # gone on its own, not cut: not counted
                for channel in session.channels:
                    self.broker.remove(channel, session)
                session.channels.clear()
            if session.outbox is not None and session.outbox.cut:
                logger.info(
                    "connection %d from %s: subscriber cut, its output buffer went past "
                    "the pubsub limit",
                    conn.id,
                    conn.peer,
                )

    async def sweep_expired(self) -> None:
        """Remove expired keys now and then, until cancelled."""
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            while self.store.sweep(SWEEP_LIMIT) == SWEEP_LIMIT:
                await trio.lowlevel.checkpoint()


class _Wakeup:
    # A re-armable trio.Event: the writer waits, the outbox sets.
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = trio.Event()

    def set(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()
        self.event = trio.Event()


def run_batch(
    session: Session,
    commands: list[list[bytes]],
    parser: RespParser,
    start: int = 0,
    budget: float = math.inf,
) -> tuple[bytes, int]:
    """Run ``commands[start:]`` as Redis would: stop after a QUIT; after the last one,
    a protocol error's reply. Stops early once the replies pass ``budget`` bytes, so
    that a pipeline of big replies is sent piece by piece, not held whole.

    Returns the replies and the index of the next command to run (``len(commands)``
    when done). Sets ``session.closing`` when the connection must close.
    """
    execute = session.execute
    replies = []
    size = 0
    index = start
    end = len(commands)
    while index < end:
        reply = execute(commands[index])
        index += 1
        if session.closing:
            index = end  # what follows a QUIT is not run
        replies.append(reply)
        size += len(reply)
        if size > budget:
            break
    if index == end and parser.error is not None and not session.closing:
        replies.append(parser.error.reply)
        session.closing = True
        logger.debug("protocol error: %s", parser.error)
    if session.silent:
        return b"", end
    return b"".join(replies), index


async def _serve_requests(
    conn: triosrv.Connection,
    session: Session,
    parser: RespParser,
    nursery: trio.Nursery,
    wakeup: _Wakeup,
) -> None:
    receive_some = conn.receive_some
    send_all = conn.send_all
    feed = parser.feed
    execute = session.execute
    while True:
        data = await receive_some()
        if not data:
            return
        commands = feed(data)
        if len(commands) == 1 and parser.error is None:
            reply = execute(commands[0])  # the common turn, kept short
        else:
            reply = await _run_pipeline(session, commands, parser, send_all)
        if session.channels:
            break
        if reply:
            await send_all(reply)
        if session.closing:
            return
    # Subscribed: from now on the writer sends everything, in order, and this task
    # only reads (a subscriber may still PING, SUBSCRIBE, UNSUBSCRIBE, QUIT).
    outbox = session.outbox
    assert outbox is not None
    outbox.add(reply)
    nursery.start_soon(_write_outbox, conn, session, wakeup)
    while not session.closing:
        data = await receive_some()
        if not data:
            break
        reply, _ = run_batch(session, feed(data), parser)
        if reply:
            outbox.add(reply)
    session.closing = True
    wakeup.set()


async def _run_pipeline(
    session: Session,
    commands: list[list[bytes]],
    parser: RespParser,
    send_all: Callable[[bytes], Awaitable[None]],
) -> bytes:
    # Runs a chunk's commands, sending their replies every SEND_SIZE bytes; returns
    # the last piece. Once the session subscribes, nothing more is sent from here:
    # the rest goes to the outbox, behind any message published meanwhile.
    reply, index = run_batch(session, commands, parser, 0, SEND_SIZE)
    while index < len(commands) and not session.channels:
        await send_all(reply)
        reply, index = run_batch(session, commands, parser, index, SEND_SIZE)
    if index < len(commands):
        rest, _ = run_batch(session, commands, parser, index)
        reply += rest
    return reply


async def _write_outbox(conn: triosrv.Connection, session: Session, wakeup: _Wakeup) -> None:
    # Sends what the outbox holds until the session closes and the outbox is empty.
    outbox = session.outbox
    assert outbox is not None
    while True:
        data = outbox.take(SEND_SIZE)
        if data:
            await conn.send_all(data)
            outbox.sent(len(data))
        elif session.closing:
            return
        else:
            await wakeup.wait()


class KeyValueProtocol(Protocol):
    """The key-value commands as a sans-IO :class:`~triosrv.protocols.Protocol`, for
    the loop backends (``--backend epoll``): bytes in, replies out, no tasks.

    It has the ``answer`` fast path (see :mod:`triosrv.protocols`): a chunk whose
    replies fit in ``max_bytes`` and do not close the connection is answered in one
    call. A chunk that does not qualify is only known to after it was run, so then
    ``answer`` keeps the replies, says "not now" (None), and the ``receive_data`` the
    driver calls next with that same chunk only marks it taken.
    """

    __slots__ = ("_closing", "_commands", "_next", "_offset", "_out", "_parser", "_run", "_session")

    def __init__(self, server: Server) -> None:
        self._session, self._parser = server.new_session()
        self._out = b""  # replies not sent yet, from _offset on
        self._offset = 0
        self._closing = False
        self._run: bytes | None = None  # the chunk answer() ran but did not answer
        self._commands: list[list[bytes]] = []  # a long pipeline's commands, from _next
        self._next = 0

    def _replies(self, data: bytes) -> bytes:
        commands = self._parser.feed(data)
        if len(commands) == 1 and self._parser.error is None:
            return self._session.execute(commands[0])
        if commands or self._parser.error is not None:
            reply, index = run_batch(self._session, commands, self._parser, 0, SEND_SIZE)
            if index < len(commands):  # the rest runs as data_to_send drains the replies
                self._commands, self._next = commands, index
            return reply
        return b""

    def answer(self, data: bytes, max_bytes: int) -> bytes | None:
        """The replies to ``data`` when they fit and keep the connection; else None."""
        reply = self._replies(data)
        if len(reply) <= max_bytes and not self._session.closing and not self._commands:
            return reply
        self._keep(reply)
        self._run = data
        return None

    def receive_data(self, data: bytes) -> None:
        """Run the commands ``data`` completes; ``b""`` (EOF) closes after the replies."""
        if data is self._run:  # answer() ran it already
            self._run = None
            return
        if not data:
            self._closing = True
            return
        self._keep(self._replies(data))

    def _keep(self, reply: bytes) -> None:
        if reply:
            pending = self._out[self._offset :]
            self._out = pending + reply if pending else reply
            self._offset = 0
        if self._session.closing:
            self._closing = True

    def data_to_send(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the pending replies (no copy of the rest); the next
        commands of a long pipeline run once those before them are sent."""
        if not self._out and self._next < len(self._commands):
            reply, self._next = run_batch(
                self._session, self._commands, self._parser, self._next, SEND_SIZE
            )
            if self._next >= len(self._commands):
                self._commands, self._next = [], 0
            self._keep(reply)
        out, offset = self._out, self._offset
        if offset == 0 and len(out) <= max_bytes:
            self._out = b""
            return out
        chunk = out[offset : offset + max_bytes]
        self._offset = offset + len(chunk)
        if self._offset >= len(out):
            self._out, self._offset = b"", 0
        return chunk

    @property
    def close_after_flush(self) -> bool:
        """True after QUIT, a protocol error or the client's EOF."""
        return self._closing


# -- the command line -----------------------------------------------------------------------

_SIZE = re.compile(r"([0-9]+)(b|k|kb|m|mb|g|gb)?", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 10**6,
    "mb": 1024**2,
    "g": 10**9,
    "gb": 1024**3,
}


def memory_size(text: str) -> int:
    """A size as Redis writes them: ``1048576``, ``64kb``, ``32mb``, ``1gb``."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or not text.isascii():
        raise argparse.ArgumentTypeError(
            f"expected a size such as 65536, 64kb or 32mb, got {text!r}"
        )
    return int(match[1]) * _UNITS[(match[2] or "").lower()]


def seconds_or_zero(text: str) -> float | None:
    """Seconds; 0 means no limit (Redis's ``timeout 0``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; argparse exits 2 with a one-line error on bad input."""
    parser = argparse.ArgumentParser(
        prog="minikv", description="A Redis-protocol (RESP2) server on triosrv."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=6379, help="Port (default 6379; 0: any free).")
    parser.add_argument(
        "--backend",
        choices=("trio", "epoll"),
        default="trio",
        help="trio (default): everything; epoll: the key-value commands in triosrv's epoll loop.",
    )
    parser.add_argument(
        "--idle-timeout",
        type=seconds_or_zero,
        default=None,
        metavar="SECONDS",
        help="Close a connection silent this long (default 0: never, as Redis's timeout 0).",
    )
    parser.add_argument(
        "--write-timeout",
        type=seconds_or_zero,
        default=60.0,
        metavar="SECONDS",
        help="Close a connection whose client stopped reading this long (default 60; 0: never).",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="How long SIGTERM lets connections finish (default 10).",
    )
    parser.add_argument(
        "--maxclients", type=int, default=10000, help="Connections served at once (default 10000)."
    )
    parser.add_argument(
        "--proto-max-bulk-len",
        type=memory_size,
        default="512mb",
        metavar="SIZE",
        help="Longest argument (default 512mb).",
    )
    parser.add_argument(
        "--client-query-buffer-limit",
        type=memory_size,
        default="1gb",
        metavar="SIZE",
        help="Most bytes of one unfinished request (default 1gb).",
    )
    parser.add_argument(
        "--pubsub-limit",
        nargs=3,
        default=("32mb", "8mb", "60"),
        metavar=("HARD", "SOFT", "SECONDS"),
        help="A subscriber's output buffer limit, as Redis's client-output-buffer-limit pubsub "
        "(default 32mb 8mb 60): cut past HARD, or above SOFT for SECONDS; 0 turns one off.",
    )
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port: expected 0..65535, got {args.port}")
    if args.maxclients < 1:
        parser.error(f"--maxclients: expected a positive integer, got {args.maxclients}")
    if not (math.isfinite(args.grace) and args.grace >= 0):
        parser.error(f"--grace: expected seconds >= 0, got {args.grace}")
    try:
        hard, soft = (memory_size(v) for v in args.pubsub_limit[:2])
        seconds = int(args.pubsub_limit[2])
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(f"--pubsub-limit: {exc}")
    if seconds < 0:
        parser.error("--pubsub-limit: SECONDS must be >= 0")
    if args.proto_max_bulk_len < 1 or args.client_query_buffer_limit < 1:
        parser.error("--proto-max-bulk-len and --client-query-buffer-limit must be >= 1")
    args.settings = Settings(
        max_bulk_len=args.proto_max_bulk_len,
        max_query_buffer=args.client_query_buffer_limit,
        pubsub_hard=hard,
        pubsub_soft=soft,
        pubsub_soft_seconds=seconds,
        timeout=int(args.idle_timeout or 0),
        maxclients=args.maxclients,
    )
    return args


def server_config(args: argparse.Namespace) -> triosrv.ServerConfig:
    """The triosrv configuration the options ask for."""
    host = f"[{args.host}]" if ":" in args.host else args.host
    return triosrv.ServerConfig(
        binds=[f"{host}:{args.port}"],
        backend=args.backend,
        timeouts=triosrv.Timeouts(
            # --grace 0 (cancel at once) is passed to Server.shutdown(); the config
            # only takes a positive grace.
            idle=args.idle_timeout,
            write=args.write_timeout,
            grace=args.grace or triosrv.Timeouts().grace,
        ),
        limits=triosrv.Limits(max_connections=args.maxclients),
    )


async def serve_until_signalled(server: Server, config: triosrv.ServerConfig, grace: float) -> None:
    """Serve until SIGINT/SIGTERM: the first drains for ``grace`` seconds (0: cancel
    at once), a second cancels."""
    handler: Callable[[triosrv.Connection], object]
    if config.backend == "trio":
        handler = server.handle
    else:
        handler = triosrv.protocol_handler(lambda: KeyValueProtocol(server))
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running: triosrv.Server = await nursery.start(triosrv.serve, handler, config)
            for address in running.addresses:
                logger.info("listening on %s", address)
            nursery.start_soon(server.sweep_expired)
            nursery.start_soon(_watch_signals, signals, running, grace, nursery.cancel_scope)
            await running.wait_closed()
            nursery.cancel_scope.cancel()
    stats = running.statistics()
    logger.info(
        "stopped: %d connection(s) served, %d subscriber(s) cut, %d handler error(s)",
        stats.completed,
        server.broker.cut_subscribers,
        stats.handler_errors,
    )


async def _watch_signals(
    signals: trio.abc.ReceiveChannel[int],
    running: triosrv.Server,
    grace: float,
    scope: trio.CancelScope,
) -> None:
    count = 0
    async for signum in signals:
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            running.shutdown(grace=grace)
            logger.info(
                "%s: shutting down, draining %d connection(s)", name, running.statistics().active
            )
        else:
            logger.warning("%s again: cancelling the connections now", name)
            scope.cancel()
            return


def main(argv: list[str] | None = None) -> int:
    """Run minikv until a signal; returns the exit status (1 if the bind fails)."""
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(args.log_level.upper())
    logger.propagate = False
    try:
        config = server_config(args)
    except triosrv.ConfigError as exc:
        print(f"minikv: error: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(serve_until_signalled, Server(args.settings), config, args.grace)
    except BaseExceptionGroup as group:
        bind_errors = group.subgroup(triosrv.BindError)
        if bind_errors is None or bind_errors.split(triosrv.BindError)[1] is not None:
            raise
        print(f"minikv: error: {_first(bind_errors).strerror}", file=sys.stderr)
        return 1
    return 0


def _first(group: BaseExceptionGroup[triosrv.BindError]) -> triosrv.BindError:
    exc = group.exceptions[0]
    return exc if isinstance(exc, triosrv.BindError) else _first(exc)


if __name__ == "__main__":
    sys.exit(main())
