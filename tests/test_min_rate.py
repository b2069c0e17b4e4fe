"""The minimum receive rate: the slowloris defence, on virtual time and on every backend.

An idle timeout restarts with every byte, so a peer that drips one byte just before
each idle deadline holds its connection for ever. ``Timeouts.min_receive_rate`` closes
it (``SlowReceiveTimeout``, counted as ``slow_receive``). The virtual-time tests run
the ``trio`` backend over memory streams; the real-socket ones run every backend with
a short window and generous tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import triosrv
from triosrv import ConfigError, ServerConfig, SlowReceiveTimeout, Timeouts
from triosrv._config import BACKENDS
from triosrv._deadlines import DeadlineKeeper
from triosrv._errors import TIMEOUT_KINDS
from triosrv.chaos import ChaosConfig, parse_target, run_chaos
from triosrv.lowlevel import ConnectionRecord
from triosrv.lowlevel._record import NOT_WAITING, RECEIVING
from triosrv.testing import open_test_server

from .helpers import connect, running_server
from .test_cli import cli_server, run_cli

# A rate the drippers below stay far under, and the steady senders far above.
RATE = 10.0
WINDOW = 2.0

# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_receive_rate": 0}, "min_receive_rate: expected a positive number of bytes per"),
        ({"min_receive_rate": -5.0}, "min_receive_rate"),
        ({"min_receive_rate": math.nan}, "min_receive_rate"),
        ({"min_receive_rate": "10"}, "min_receive_rate"),
        ({"min_receive_rate": True}, "min_receive_rate"),
        ({"min_receive_rate_window": 0}, "min_receive_rate_window: expected a positive number"),
        ({"min_receive_rate_window": None}, "min_receive_rate_window"),
    ],
)
def test_min_rate_config_rejects_bad_values_naming_the_field(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Timeouts(**fields)  # type: ignore[arg-type]  # wrong types on purpose


def test_min_rate_is_off_by_default() -> None:
    timeouts = Timeouts()
    assert timeouts.min_receive_rate is None
    assert timeouts.min_receive_rate_window == 10.0
    assert "slow_receive" in TIMEOUT_KINDS


def test_min_rate_timeout_names_rate_and_window() -> None:
    exc = SlowReceiveTimeout(2.0, rate=10.0)
    assert isinstance(exc, triosrv.ConnectionTimeout)
    assert exc.kind == "slow_receive" and exc.seconds == 2.0 and exc.rate == 10.0
    assert str(exc) == "slow_receive timeout: under 10 bytes/s over 2 s"


# -- the keeper's measurement, step by step --------------------------------------------


class _Record(ConnectionRecord):
    """A connection record that notes when the keeper stops it."""

    __slots__ = ("stopped",)

    def __init__(self, started_at: float) -> None:
        super().__init__(peer="p", local="l", started_at=started_at)
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def test_min_rate_keeper_measures_full_windows_only_while_waiting_to_receive() -> None:
    timeouts = Timeouts(idle=None, write=None, min_receive_rate=RATE, min_receive_rate_window=1.0)
    early, late, busy = _Record(0.0), _Record(0.5), _Record(0.0)
    keeper = DeadlineKeeper(timeouts, {1: early, 2: late, 3: busy})
    assert keeper.fire_due(0.0) == 1.0  # the first tick: next one in a window
    for record in (early, late, busy):
        record.bytes_received = 3  # some bytes, far under 10 per second
    busy.waiting = NOT_WAITING  # the server is not waiting for this one's bytes
    assert keeper.fire_due(1.0) == 2.0
    # early had a whole window and is too slow; late began mid-window and is left for
    # the next tick; busy's window does not count, and starts again.
    assert (early.timed_out, late.timed_out, busy.timed_out) == ("slow_receive", None, None)
    assert early.stopped and keeper.fired["slow_receive"] == 1
    assert (busy._rate_since, busy._rate_mark) == (1.0, 3)
    late.bytes_received = 3 + 11  # 14 bytes over 1.5 s: under 10 per second
    busy.bytes_received = 3 + 20  # 20 bytes over 1 s: above
    busy.waiting = RECEIVING
    keeper.fire_due(2.0)
    assert (late.timed_out, busy.timed_out) == ("slow_receive", None)
    assert keeper.fired["slow_receive"] == 2


def test_min_rate_keeper_leaves_a_silent_window_to_the_idle_timeout() -> None:
    timeouts = Timeouts(idle=None, write=None, min_receive_rate=RATE, min_receive_rate_window=1.0)
    silent = _Record(0.0)
    keeper = DeadlineKeeper(timeouts, {1: silent})
    for now in (0.0, 1.0, 2.0, 3.0):
        keeper.fire_due(now)
    assert silent.timed_out is None and silent._rate_since == 3.0


# -- the trio backend on virtual time ----------------------------------------------------


async def _serve_memory(
    nursery: trio.Nursery, timeouts: Timeouts, seen: list[tuple[Exception, float]]
) -> triosrv.Server:
    async def echo(conn: triosrv.Connection) -> None:
        try:
            async for chunk in conn:
                await conn.send_all(chunk)
        except triosrv.ConnectionTimeout as exc:
            seen.append((exc, trio.current_time()))
            raise

    config = ServerConfig(binds=(), timeouts=timeouts)
    server: triosrv.Server = await nursery.start(triosrv.serve, echo, config)
    return server


async def _talk(
    server: triosrv.Server, chunk: bytes, interval: float, until: float
) -> tuple[float | None, int]:
    """Send ``chunk`` every ``interval`` s until the server closes us or ``until``;
    return (when it closed us or None, bytes echoed)."""
    client, server_end = trio.testing.memory_stream_pair()
    await server.add_stream(server_end, peer="client")
    closed_at: float | None = None
    echoed = 0
    async with client, trio.open_nursery() as nursery:

        async def send() -> None:
            while trio.current_time() < until:
                try:
                    await client.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                await trio.sleep(interval)  # not a real sleep: autojump_clock
            nursery.cancel_scope.cancel()

        nursery.start_soon(send)
        while data := await client.receive_some():
            echoed += len(data)
        closed_at = trio.current_time()
        nursery.cancel_scope.cancel()
    return closed_at, echoed


@pytest.mark.parametrize("min_rate", [None, RATE], ids=["idle-only", "min-rate"])
async def test_min_rate_closes_a_peer_dripping_just_under_the_idle_timeout(
    autojump_clock: trio.abc.Clock, min_rate: float | None
) -> None:
    idle = 1.0
    timeouts = Timeouts(idle=idle, min_receive_rate=min_rate, min_receive_rate_window=WINDOW)
    seen: list[tuple[Exception, float]] = []
    async with trio.open_nursery() as nursery:
        server = await _serve_memory(nursery, timeouts, seen)
        start = trio.current_time()
        closed_at, echoed = await _talk(server, b"x", idle - 0.1, until=start + 60)
        stats = server.statistics()
        server.shutdown()
    assert stats.timeouts["idle"] == 0
    if min_rate is None:  # the idle timeout alone: held for the whole minute
        assert closed_at is None and echoed >= 60
        assert stats.timeouts["slow_receive"] == 0
        return
    assert closed_at is not None
    assert WINDOW <= closed_at - start <= 2 * WINDOW + idle
    assert stats.timeouts["slow_receive"] == 1
    [(exc, _when)] = seen
    assert isinstance(exc, SlowReceiveTimeout)
    assert str(exc) == "slow_receive timeout: under 10 bytes/s over 2 s"


async def test_min_rate_never_closes_a_peer_sending_above_the_rate(
    autojump_clock: trio.abc.Clock,
) -> None:
    timeouts = Timeouts(idle=1.0, min_receive_rate=RATE, min_receive_rate_window=WINDOW)
    async with trio.open_nursery() as nursery:
        server = await _serve_memory(nursery, timeouts, [])
        start = trio.current_time()
        # 3 bytes every 0.2 s: 15 bytes per second, 20 windows long.
        closed_at, echoed = await _talk(server, b"abc", 0.2, until=start + 20 * WINDOW)
        stats = server.statistics()
        server.shutdown()
    assert closed_at is None and echoed >= 600 - 3  # 200 sends, the last maybe in flight
    assert stats.timeouts["slow_receive"] == 0 and stats.timeouts["idle"] == 0


async def test_min_rate_leaves_a_silent_peer_to_the_idle_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    timeouts = Timeouts(idle=5.0, min_receive_rate=RATE, min_receive_rate_window=1.0)
    async with trio.open_nursery() as nursery:
        server = await _serve_memory(nursery, timeouts, [])
        client, server_end = trio.testing.memory_stream_pair()
        await server.add_stream(server_end)
        start = trio.current_time()
        assert await client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.01)
        stats = server.statistics()
        server.shutdown()
    await client.aclose()
    assert (stats.timeouts["idle"], stats.timeouts["slow_receive"]) == (1, 0)


async def test_min_rate_does_not_count_windows_the_handler_spends_busy(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The handler reads one chunk every 4.7 s (the application is slow, not the
    # peer): each rate tick (every 2 s) finds it sleeping, not waiting for bytes.
    async def slow_reader(conn: triosrv.Connection) -> None:
        while await conn.receive_some(1):
            await trio.sleep(4.7)  # not a real sleep: autojump_clock

    timeouts = Timeouts(idle=None, min_receive_rate=RATE, min_receive_rate_window=WINDOW)
    async with trio.open_nursery() as nursery:
        config = ServerConfig(binds=(), timeouts=timeouts)
        server = await nursery.start(triosrv.serve, slow_reader, config)
        client, server_end = trio.testing.memory_stream_pair()
        await server.add_stream(server_end)
        for _ in range(30):
            await client.send_all(b"y")
            await trio.sleep(1)  # not a real sleep: autojump_clock
        stats = server.statistics()
        server.shutdown()
    await client.aclose()
    assert stats.active == 1 and stats.timeouts["slow_receive"] == 0


# -- every backend, real sockets -----------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn (as in test_backends.py)."""
    return str(request.param)


async def _send_every(
    stream: trio.SocketStream, chunk: bytes, interval: float, count: int
) -> tuple[float | None, int]:
    """Send ``chunk`` ``count`` times, ``interval`` s apart, reading the echo; return
    (seconds until the server closed us, or None; bytes echoed)."""
    start = trio.current_time()
    closed_after: float | None = None
    echoed = 0

    async def send(cancel: Callable[[], object]) -> None:
        for _ in range(count):
            try:
                await stream.send_all(chunk)
            except trio.BrokenResourceError:
                return
            await trio.sleep(interval)  # real sleep: the peer's pace is what is tested
        cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, nursery.cancel_scope.cancel)
        try:
            while data := await stream.receive_some():
                echoed += len(data)
        except trio.BrokenResourceError:  # closed with our bytes unread: a reset
            pass
        closed_after = trio.current_time() - start
        nursery.cancel_scope.cancel()
    return closed_after, echoed


async def _with_connection(
    backend: str,
    timeouts: Timeouts,
    talk: Callable[[trio.SocketStream], Awaitable[tuple[float | None, int]]],
) -> tuple[float | None, int, triosrv.ServerStatistics]:
    async with running_server("echo", timeouts=timeouts, backend=backend) as server:
        async with await connect(server) as stream:
            with trio.fail_after(10):
                closed_after, echoed = await talk(stream)
        # The close seen by the client may come a moment before the server's count.
        with trio.move_on_after(2):
            while server.statistics().active:
                await trio.sleep(0.01)  # real sleep: waiting for the server's cleanup
        stats = server.statistics()
    return closed_after, echoed, stats


async def test_min_rate_closes_a_dripping_peer_on_every_backend(backend: str) -> None:
    # One byte every 0.1 s is 10 bytes/s: under 100, and never idle for 1 s. No clock
    # bound here: when the window fires is tested in virtual time above; this checks
    # on every backend that the dripper is closed before its 5 s of dripping end, by
    # the minimum rate and not the idle timeout.
    timeouts = Timeouts(idle=1.0, min_receive_rate=100, min_receive_rate_window=0.5)
    closed_after, _echoed, stats = await _with_connection(
        backend, timeouts, lambda stream: _send_every(stream, b"d", 0.1, count=50)
    )
    assert closed_after is not None
    assert stats.timeouts["slow_receive"] == 1
    assert stats.timeouts["idle"] == 0


async def test_min_rate_keeps_a_steady_peer_on_every_backend(backend: str) -> None:
    # 1000 bytes every 0.05 s, about 20 kB/s, over three windows of 0.5 s.
    timeouts = Timeouts(idle=1.0, min_receive_rate=100, min_receive_rate_window=0.5)
    closed_after, echoed, stats = await _with_connection(
        backend, timeouts, lambda stream: _send_every(stream, b"s" * 1000, 0.05, count=30)
    )
    assert closed_after is None and echoed > 0
    assert stats.timeouts["slow_receive"] == 0


# -- triosrv chaos sees which defence closed the drippers ---------------------------------


@pytest.mark.parametrize("defence", ["min-rate", "idle"])
async def test_min_rate_chaos_slowloris_passes_and_tells_a_rate_limit_from_idle(
    defence: str,
) -> None:
    if defence == "min-rate":  # 5 bytes/s drips, never 1 s apart: only the rate stops them
        # A 1 s window: every dripper has sent several bytes before the first check,
        # even when a loaded machine connects it late.
        timeouts = Timeouts(idle=1.5, min_receive_rate=50, min_receive_rate_window=1.0)
        drip = 0.2
    else:  # drips further apart than the idle timeout
        timeouts, drip = Timeouts(idle=0.5), 1.5
    config = ChaosConfig(
        scenarios=("slowloris",),
        duration=2.5,
        quiet=0.2,
        connections=5,
        drip_interval=drip,
        stall=2.0,
        recovery=3.0,
        max_p99_ratio=0,  # no test asserts a speed
    )
    async with open_test_server("echo", timeouts=timeouts) as running:
        report = await run_chaos(parse_target(f"127.0.0.1:{running.port}"), config)
        stats = running.server.statistics()
    [result] = report.results
    assert result.passed, report.format_text()
    assert result.figures["closed_by_server"] == config.connections, result.server_did
    if defence == "min-rate":
        assert result.figures["closed_mid_drip"] == config.connections
        assert "while still dripping" in result.server_did
        assert stats.timeouts["slow_receive"] == config.connections
    else:
        assert "closed_mid_drip" not in result.figures
        assert stats.timeouts["idle"] >= config.connections


# -- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--min-receive-rate", "0"],
        ["--min-receive-rate", "fast"],
        ["--min-receive-rate-window", "0"],
    ],
)
def test_min_rate_cli_bad_option_exits_2_naming_it(args: list[str]) -> None:
    result = run_cli("listen", "--port", "0", *args)
    assert result.returncode == 2
    assert args[0] in result.stderr and "Traceback" not in result.stderr


async def test_min_rate_cli_options_reach_the_server() -> None:
    # With the default 60 s idle timeout, only the minimum rate can close a dripper
    # within a few seconds. Real time because the server is a subprocess: the one
    # real-clock smoke test of the slow_receive kind.
    async with cli_server("--min-receive-rate", "100", "--min-receive-rate-window", "0.5") as srv:
        stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
        async with stream:
            with trio.fail_after(10):
                closed_after, _ = await _send_every(stream, b"d", 0.1, count=50)
    assert closed_after is not None and closed_after < 3.0
