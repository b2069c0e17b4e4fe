"""triosrv.testing: the test server, fault-injecting streams, leak checks, the sweep."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

import triosrv
from triosrv._config import BACKENDS, ServerConfig
from triosrv._server import Handler
from triosrv.protocols import Echo
from triosrv.testing import (
    Faults,
    FaultyStream,
    LeakError,
    SweepError,
    cancellation_sweep,
    check_no_leaks,
    open_test_server,
    wait_for,
)

# -- open_test_server -------------------------------------------------------------


async def test_open_test_server_serves_on_loopback_and_stops() -> None:
    async with open_test_server("echo") as running:
        assert running.host == "127.0.0.1" and running.port
        assert running.address == f"tcp://127.0.0.1:{running.port}"
        async with await running.connect() as stream:
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
    assert running.server.state == "closed"


async def test_open_test_server_fails_listing_a_leaked_client_socket() -> None:
    leaked: list[trio.SocketStream] = []
    try:
        with pytest.raises(LeakError, match=r"leaked fd: fd \d+ -> socket:.*127\.0\.0\.1"):
            async with open_test_server("echo") as running:
                leaked.append(await running.connect())
    finally:
        for stream in leaked:
            await stream.aclose()


async def test_open_test_server_raises_a_lone_handler_error_as_itself() -> None:
    async def crash(conn: triosrv.Connection) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        async with (
            open_test_server(crash, handler_errors="raise") as running,
            await running.connect() as stream,
        ):
            await stream.send_all(b"x")
            await trio.sleep_forever()


# -- leak checks ------------------------------------------------------------------


def test_check_no_leaks_lists_a_leaked_fd() -> None:
    sock = None
    try:
        with pytest.raises(LeakError) as info, check_no_leaks():
            sock = socket.socket()
        assert len(info.value.leaks.fds) == 1
        assert "socket:" in info.value.leaks.fds[0]
    finally:
        if sock is not None:
            sock.close()


def test_check_no_leaks_lists_a_leaked_thread_and_forgives_a_finishing_one() -> None:
    release = threading.Event()
    with check_no_leaks(thread_grace=5):
        threading.Thread(target=release.wait, args=(0.05,), name="finishing").start()
    thread = threading.Thread(target=release.wait, name="stuck")
    try:
        with (
            pytest.raises(LeakError, match=r"leaked thread: .*stuck"),
            check_no_leaks(thread_grace=0.05),
        ):
            thread.start()
    finally:
        release.set()
        thread.join()


async def test_check_no_leaks_lists_a_leaked_task() -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(LeakError, match=r"leaked task: .*forgotten"), check_no_leaks():
            nursery.start_soon(trio.sleep_forever, name="forgotten")
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


def test_leak_check_fixture_fails_the_test_with_the_list(tmp_path: Path) -> None:
    (tmp_path / "test_leaky.py").write_text(
        textwrap.dedent(
            """
            import socket
            KEEP = []

            def test_leaks(leak_check):
                KEEP.append(socket.socket())

            def test_clean(leak_check):
                socket.socket().close()
            """
        )
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "triosrv.testing.pytest_plugin",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout
    # A fixture's teardown failure is reported by pytest as an error of that test.
    assert "ERROR test_leaky.py::test_leaks" in result.stdout
    assert "2 passed, 1 error" in result.stdout
    assert "leaked fd: fd" in result.stdout and "socket:" in result.stdout


# -- fault-injecting streams --------------------------------------------------------


async def _pump(stream: trio.abc.ReceiveStream, chunks: list[bytes]) -> None:
    while data := await stream.receive_some():
        chunks.append(bytes(data))


async def test_faulty_stream_drips_in_small_pieces_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    faulty = FaultyStream(client, Faults(drip=3, drip_interval=1.0, seed=7))
    chunks: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump, server, chunks)
        start = trio.current_time()
        await faulty.send_all(b"0123456789" * 3)
        await faulty.send_eof()
    assert b"".join(chunks) == b"0123456789" * 3
    assert max(map(len, chunks)) <= 3
    assert trio.current_time() - start == pytest.approx(len(chunks) - 1)


async def test_faulty_stream_delays_replay_exactly_from_the_seed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def timings(seed: int) -> list[float]:
        client, server = trio.testing.memory_stream_pair()
        faulty = FaultyStream(client, Faults(delay=2.0, seed=seed))
        out = []
        for _ in range(5):
            start = trio.current_time()
            await faulty.send_all(b"x")
            await server.receive_some()
            out.append(trio.current_time() - start)
        return out

    first = await timings(1)
    assert first == pytest.approx(await timings(1))  # the same seed replays exactly
    assert first != pytest.approx(await timings(2))
    assert all(0 <= t <= 2.0 for t in first) and sum(first) > 0


async def test_faulty_stream_stalls_sends_after_n_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    faulty = FaultyStream(client, Faults(stall_after=4, stall_for=30))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(faulty.send_all, b"abcdefgh")
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        assert await server.receive_some() == b"abcd"  # split at the trigger, then stalled
        assert await server.receive_some() == b"efgh"
        assert trio.current_time() - start == pytest.approx(30)
    with trio.move_on_after(1000) as scope:  # stall_for defaults to for ever
        await FaultyStream(client, Faults(stall_after=0)).send_all(b"x")
    assert scope.cancelled_caught


async def test_faulty_stream_stalls_receives_like_a_reader_that_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    faulty = FaultyStream(client, Faults(stall_receive_after=3, stall_for=60))
    await server.send_all(b"hello")
    assert await faulty.receive_some() == b"hel"
    start = trio.current_time()
    assert await faulty.receive_some() == b"lo"
    assert trio.current_time() - start == pytest.approx(60)


async def test_faulty_stream_truncates_then_sends_eof() -> None:
    client, server = trio.testing.memory_stream_pair()
    faulty = FaultyStream(client, Faults(truncate_after=5))
    await faulty.send_all(b"0123456789")
    await faulty.send_all(b"more")  # dropped silently
    assert faulty.truncated and faulty.sent == 5
    chunks: list[bytes] = []
    await _pump(server, chunks)
    assert b"".join(chunks) == b"01234"


async def test_faulty_stream_aborts_a_memory_stream_after_n_bytes() -> None:
    client, server = trio.testing.memory_stream_pair()
    faulty = FaultyStream(client, Faults(abort_after=3))
    with pytest.raises(trio.BrokenResourceError):
        await faulty.send_all(b"hello")
    with pytest.raises(trio.BrokenResourceError):
        await faulty.send_all(b"again")
    chunks: list[bytes] = []
    await _pump(server, chunks)
    assert b"".join(chunks) == b"hel"


async def test_faulty_stream_aborts_a_socket_with_a_reset() -> None:
    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = await trio.open_tcp_stream(*listener.getsockname())
        peer, _ = await listener.accept()
        with peer:
            faulty = FaultyStream(client, Faults(abort_after=3))
            with pytest.raises(trio.BrokenResourceError):
                await faulty.send_all(b"hello")
            assert await peer.recv(10) == b"hel"
            with pytest.raises(ConnectionResetError):
                await peer.recv(10)
        await client.aclose()


async def test_faulty_stream_drip_slower_than_idle_timeout_is_cut_by_the_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(binds=(), timeouts=triosrv.Timeouts(idle=2))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(triosrv.serve, triosrv.load_handler("echo"), config)
        client, server_end = trio.testing.memory_stream_pair()
        await server.add_stream(server_end)
        faulty = FaultyStream(client, Faults(drip=1, drip_interval=5))
        with pytest.raises(trio.BrokenResourceError):
            await faulty.send_all(b"slowloris")
        assert server.statistics().timeouts["idle"] == 1
        server.shutdown(grace=0)


def test_faults_random_is_a_function_of_the_seed_and_validated() -> None:
    assert Faults.random(3) == Faults.random(3)
    assert len({Faults.random(seed) for seed in range(20)}) > 10
    with pytest.raises(ValueError, match="abort_after"):
        Faults(abort_after=-1)
    with pytest.raises(ValueError, match="delay"):
        Faults(delay=float("nan"))


# -- the cancellation sweep -----------------------------------------------------------


def transfer_scenario(
    backend: str, handler: Handler | str = "echo"
) -> Callable[[], Awaitable[None]]:
    """Start a server on ``backend``, connect, echo a few messages, shut down."""

    async def scenario() -> None:
        async with (
            open_test_server(handler, check_leaks=False, backend=backend) as running,
            await running.connect() as stream,
        ):
            for size in (1, 1000, 70000):
                await stream.send_all(b"x" * size)
                received = 0
                while received < size:
                    received += len(await stream.receive_some())

    return scenario


# BACKENDS: every server design; each must keep the same cancellation guarantees.
@pytest.mark.parametrize("backend", BACKENDS)
async def test_cancellation_sweep_passes_over_connect_transfer_shutdown(backend: str) -> None:
    report = await cancellation_sweep(transfer_scenario(backend), max_trials=150)
    report.check()
    assert report.steps > 10
    assert sum(trial.reached for trial in report.trials) >= min(report.steps, 150) // 2


class _LeakyEcho(Echo):
    """An echo protocol that opens a socket per connection and never closes it."""

    planted: list[socket.socket] = []  # noqa: RUF012  # shared on purpose: the test closes them

    def __init__(self) -> None:
        super().__init__()
        self.planted.append(socket.socket())


@pytest.mark.parametrize("backend", BACKENDS)
async def test_cancellation_sweep_finds_a_planted_socket_leak(backend: str) -> None:
    handler = triosrv.protocol_handler(_LeakyEcho)
    try:
        report = await cancellation_sweep(transfer_scenario(backend, handler))
        with pytest.raises(SweepError, match=r"leaked fd: fd \d+ -> socket:"):
            report.check()
    finally:
        for sock in _LeakyEcho.planted:
            sock.close()
        _LeakyEcho.planted.clear()


async def test_cancellation_sweep_finds_a_leak_only_cancellation_exposes() -> None:
    planted: list[socket.socket] = []

    async def handler(conn: triosrv.Connection) -> None:
        sock = socket.socket()
        planted.append(sock)
        async for chunk in conn:
            await conn.send_all(chunk)
        sock.close()  # not in a finally: skipped when cancelled

    async def scenario() -> None:
        async with (
            open_test_server(handler, check_leaks=False, grace=5) as running,
            await running.connect() as stream,
        ):
            await stream.send_all(b"ping")
            await stream.receive_some()

    try:
        report = await cancellation_sweep(scenario)
        assert not report.trials[0].failed  # the uncancelled run is clean
        assert report.failures, "the sweep missed the leak on the cancellation path"
        assert all("socket:" in trial.leaks.fds[0] for trial in report.failures)
    finally:
        for sock in planted:
            sock.close()


async def test_cancellation_sweep_reports_what_came_out_besides_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def scenario() -> None:
        try:
            for _ in range(5):
                await trio.sleep(1)  # not a real sleep: autojump_clock
        except trio.Cancelled:
            raise ValueError("turned a cancellation into an error") from None

    report = await cancellation_sweep(scenario)
    assert report.steps >= 5
    assert not report.trials[0].failed
    assert len(report.failures) == len(report.trials) - 1
    assert "ValueError: turned a cancellation" in (report.failures[0].error or "")


async def test_cancellation_sweep_cancels_before_each_step_in_turn() -> None:
    made: list[int] = []

    async def scenario() -> None:
        done = 0
        try:
            for _ in range(20):
                await trio.lowlevel.checkpoint()
                done += 1
        finally:
            made.append(done)

    report = await cancellation_sweep(scenario)
    report.check()
    assert made[0] == 20  # the uncancelled run, 21 steps: the start and 20 resumptions
    assert report.steps == 21
    # Before step 1 (the start) or 2 (the first resumption): no checkpoint passed;
    # before step k: k - 2 of them passed, the next one raised Cancelled.
    assert made[1:] == [0, *range(20)]


async def test_cancellation_sweep_samples_large_scenarios_from_the_seed() -> None:
    async def scenario() -> None:
        for _ in range(500):
            await trio.lowlevel.checkpoint()

    report = await cancellation_sweep(scenario, max_trials=20, seed=4)
    steps = [trial.step for trial in report.trials[1:]]
    assert len(steps) == 20 and steps[0] == 1 and steps[-1] == report.steps
    again = await cancellation_sweep(scenario, max_trials=20, seed=4)
    assert steps == [trial.step for trial in again.trials[1:]]
    report.check()


# -- wait_for ---------------------------------------------------------------------


async def test_wait_for_returns_the_first_true_value_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []

    def third_time() -> str:
        calls.append(trio.current_time())
        return "ready" if len(calls) == 3 else ""

    start = trio.current_time()
    assert await wait_for(third_time, interval=0.5) == "ready"
    assert [t - start for t in calls] == pytest.approx([0.0, 0.5, 1.0])


async def test_wait_for_a_true_condition_does_not_sleep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    assert await wait_for(lambda: 7) == 7
    assert trio.current_time() == start


async def test_wait_for_times_out_naming_the_predicate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def never() -> bool:
        return False

    start = trio.current_time()
    with pytest.raises(trio.TooSlowError, match=r"never \(.*test_testing.py:\d+\) still false"):
        await wait_for(never, timeout=3)
    assert trio.current_time() - start == pytest.approx(3)


@pytest.mark.parametrize("interval", [0, -1.0, float("nan")])
async def test_wait_for_refuses_an_interval_that_is_not_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="interval must be > 0"):
        await wait_for(lambda: True, interval=interval)
