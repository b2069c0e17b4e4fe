"""examples/minikv.py as a program and as a handler: options, signals, the epoll
backend, pub/sub limits, and its sans-IO parts (store, outbox) with a fake clock."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
import trio

import triosrv
from triosrv.testing import open_test_server

from .minikv_support import MINIKV, encode, exchange, minikv, minikv_process, minikv_state

Broker, Outbox, Settings, Store = (
    minikv_state.Broker,
    minikv_state.Outbox,
    minikv_state.Settings,
    minikv_state.Store,
)


def run_minikv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MINIKV), *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port: expected 0..65535"),
        (["--port", "x"], "invalid int value"),
        (["--proto-max-bulk-len", "12q"], "expected a size"),
        (["--pubsub-limit", "1mb", "x", "0"], "--pubsub-limit"),
        (["--idle-timeout", "-1"], "expected seconds >= 0"),
        (["--backend", "select"], "invalid choice"),
        (["--maxclients", "0"], "--maxclients"),
    ],
)
def test_minikv_bad_options_exit_2_with_one_line(args: list[str], message: str) -> None:
    done = run_minikv(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_minikv_port_in_use_exits_1() -> None:
    with minikv_process() as (port, _):
        done = run_minikv("--port", str(port))
    assert done.returncode == 1
    assert done.stderr.startswith("minikv: error: ")
    assert "Traceback" not in done.stderr


def test_minikv_sigterm_drains_and_exits_0() -> None:
    with minikv_process("--grace", "5") as (port, server):
        assert b"INFO triosrv: listening on tcp://127.0.0.1:" in server.read_log()
        assert exchange(port, encode("SET", "k", "v"), until=b"+OK\r\n") == b"+OK\r\n"
        assert server.stop(signal.SIGTERM) == 0
        log = server.read_log()
    assert b"SIGTERM: shutting down" in log
    assert b"stopped: " in log


@pytest.mark.parametrize("grace", ["0", "0.5"])
def test_minikv_sigterm_cancels_idle_clients_after_grace(grace: str) -> None:
    with minikv_process("--grace", grace) as (port, server):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
            idle.sendall(encode("PING"))
            assert idle.recv(100) == b"+PONG\r\n"
            started = time.monotonic()
            assert server.stop(signal.SIGTERM) == 0
            assert time.monotonic() - started < 8  # generous: a loaded machine
            assert idle.recv(100) == b""  # closed by the server
        assert b"1 cancelled" in server.read_log()


def test_minikv_epoll_backend_serves_the_key_value_subset() -> None:
    with minikv_process("--backend", "epoll") as (port, _):
        script = encode("SET", "n", "41") + encode("INCR", "n") + encode("MGET", "n", "x")
        replies = exchange(
            port, script + encode("SUBSCRIBE", "c") + encode("PING"), until=b"+PONG\r\n"
        )
        assert replies.startswith(b"+OK\r\n:42\r\n*2\r\n$2\r\n42\r\n$-1\r\n-ERR SUBSCRIBE needs")
        assert exchange(port, b"*x\r\n") == b"-ERR Protocol error: invalid multibulk length\r\n"
        assert exchange(port, encode("QUIT") + encode("PING")) == b"+OK\r\n"


def kv_handler(settings: Settings | None = None) -> minikv.Server:
    return minikv.Server(settings or Settings())


async def receive_until(stream: trio.abc.Stream, marker: bytes, received: bytearray) -> bytes:
    with trio.fail_after(10):
        while marker not in received:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed early: {bytes(received[-200:])!r}"
            received += chunk
    head, _, rest = bytes(received).partition(marker)
    received[:] = rest
    return head + marker


async def test_minikv_handler_quit_and_protocol_error_close() -> None:
    server = kv_handler()
    async with open_test_server(server.handle) as running:
        async with await running.connect() as stream:
            await stream.send_all(encode("PING") + encode("QUIT") + encode("PING"))
            received = bytearray()
            assert await receive_until(stream, b"+OK\r\n", received) == b"+PONG\r\n+OK\r\n"
            assert await stream.receive_some() == b""
        async with await running.connect() as stream:
            await stream.send_all(b"*1\r\n$x\r\n")
            assert await receive_until(stream, b"\r\n", bytearray()) == (
                b"-ERR Protocol error: invalid bulk length\r\n"
            )
            assert await stream.receive_some() == b""


async def test_minikv_stuck_subscriber_is_cut_others_get_every_message() -> None:
    # A publisher never waits: PUBLISH replies keep coming while one subscriber reads
    # nothing; it is cut once its outbox passes the limit, the other gets everything.
    server = kv_handler(Settings(pubsub_hard=256 * 1024, pubsub_soft=0))
    async with open_test_server(server.handle) as running:
        stuck, reader, publisher = [await running.connect() for _ in range(3)]
        async with stuck, reader, publisher:
            received = bytearray()
            for sub in (stuck, reader):
                await sub.send_all(encode("SUBSCRIBE", "c"))
                await receive_until(sub, b":1\r\n", bytearray())
            payload = b"p" * 8192
            replies = bytearray()
            counts = []
            for i in range(400):  # 3.2 MiB: far more than the stuck one can absorb
                await publisher.send_all(encode("PUBLISH", "c", b"%05d" % i + payload))
                counts.append(await receive_until(publisher, b"\r\n", replies))
                await receive_until(reader, b"%05d" % i, received)
            assert counts[0] == b":2\r\n" and counts[-1] == b":1\r\n"
            assert server.broker.cut_subscribers == 1
            assert server.broker.channels[b"c"].keys() != set()
            with trio.fail_after(10):  # the stuck one is closed after what was queued
                while await stuck.receive_some(1 << 20):
                    pass


def test_store_expiry_and_sweep_with_a_fake_clock() -> None:
    now = [1_000_000]
    store = Store(lambda: now[0])
    store.data.update({b"a": b"1", b"b": b"2", b"c": b"3"})
    store.expires.update({b"a": now[0] + 100, b"b": now[0] + 200})
    assert store.live_size() == 3
    now[0] += 150
    assert store.live_size() == 2
    assert store.get(b"a") is None and b"a" not in store.data
    now[0] += 100
    assert store.sweep() == 1
    assert store.data == {b"c": b"3"} and store.expires == {}


def test_outbox_hard_and_soft_limits() -> None:
    now = [0]
    events: list[str] = []

    def outbox(hard: int, soft: int, seconds: int) -> Outbox:
        return Outbox(
            clock=lambda: now[0],
            hard=hard,
            soft=soft,
            soft_seconds=seconds,
            on_ready=lambda: events.append("ready"),
            on_cut=lambda: events.append("cut"),
        )

    box = outbox(100, 0, 0)
    assert box.add(b"x" * 60) and box.add(b"x" * 40)
    assert not box.add(b"x") and box.cut and events[-1] == "cut"
    assert not box.add(b"x")  # cut stays cut, on_cut called once
    assert events.count("cut") == 1
    box = outbox(0, 50, 10)
    assert box.add(b"x" * 60)  # above soft: the clock starts
    now[0] += 5000
    assert box.add(b"x")
    assert box.take(1000) == b"x" * 61
    box.sent(61)
    assert box.add(b"x")  # back under soft: the clock resets
    now[0] += 20000
    assert box.add(b"x" * 60)
    now[0] += 10000
    assert not box.add(b"x")


def test_broker_counts_receivers_and_cut_subscribers() -> None:
    broker = Broker()
    assert broker.publish(b"nobody", b"m") == 0
    settings = Settings()
    store = Store(lambda: 0)
    sessions = [minikv.Session(store, broker, settings) for _ in range(2)]
    cut_once = []
    for i, session in enumerate(sessions):
        session.outbox = Outbox(
            clock=lambda: 0,
            hard=10 if i == 0 else 0,
            soft=0,
            soft_seconds=0,
            on_ready=lambda: None,
            on_cut=lambda: cut_once.append(1),
        )
        session.execute([b"SUBSCRIBE", b"c"])
    assert broker.publish(b"c", b"a" * 100) == 2  # queued for both, then one was cut
    assert broker.cut_subscribers == 1 and cut_once == [1]
    assert broker.publish(b"c", b"b") == 1
    assert triosrv.protocols.RespParser().feed(sessions[1].outbox.take(1 << 20)) != []  # type: ignore[union-attr]


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.parametrize("backend", ["trio", "epoll"])
def test_minikv_pipeline_of_big_replies_is_sent_piece_by_piece(backend: str) -> None:
    # 300 GETs of a 1 MiB value in one chunk ask for 300 MiB of replies: they are
    # made and sent a piece at a time as the client reads, never held all at once.
    value = bytes(range(256)) * 4096
    with minikv_process("--backend", backend) as (port, server):
        assert exchange(port, encode("SET", "big", value), until=b"+OK\r\n") == b"+OK\r\n"
        baseline = _peak_rss_mib(server.process.pid)
        expected = b"$%d\r\n%s\r\n" % (len(value), value)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(encode("GET", "big") * 300 + encode("PING"))
            time.sleep(0.5)  # real sleep: a real server process must hold unread replies
            received = 0
            tail = b""
            while not tail.endswith(b"+PONG\r\n"):
                chunk = sock.recv(1 << 20)
                assert chunk
                received += len(chunk)
                tail = (tail + chunk)[-len(expected) - 16 :]
        assert received == 300 * len(expected) + len(b"+PONG\r\n")
        growth = _peak_rss_mib(server.process.pid) - baseline
        assert growth < 64, f"peak RSS grew by {growth:.0f} MiB"
