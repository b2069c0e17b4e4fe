"""Tests of the echo load generator's Python engine (`triosrv.bench.run_load`) and of
scripts/bench.py.

They run the generator at a tiny size against small echo servers made here and check what
it counts and that it ends by itself; the autouse ``no_leaks`` fixture of conftest.py checks
that nothing (fd, thread) is left behind. No test asserts a speed.
"""

from __future__ import annotations

import json
import selectors
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from triosrv._server_processes import baseline_cmd
from triosrv.bench import LoadResult, _cengine, _load_worker, run_load

REPO = Path(__file__).resolve().parent.parent
BASELINE = baseline_cmd()


class ThreadedEchoServer:
    """A selectors echo server in one thread; ``transform`` alters what it sends back.

    Stopping wakes the thread through a socketpair, joins it and closes every socket.
    """

    def __init__(
        self, transform: Callable[[bytes], bytes] = bytes, host: str = "127.0.0.1"
    ) -> None:
        self.transform = transform
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family)
        self.port = self.listener.getsockname()[1]
        self.wake_r, self.wake_w = socket.socketpair()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, name="echo-server")
        self.thread.start()

    def _serve(self) -> None:
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.wake_r:
                    return
                if key.fileobj is self.listener:
                    conn, _ = self.listener.accept()
                    self.conns.append(conn)
                    self.selector.register(conn, selectors.EVENT_READ)
                    continue
                assert isinstance(key.fileobj, socket.socket)
                self._echo(key.fileobj)

    def _echo(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
            if data:
                conn.sendall(self.transform(data))
                return
        except (ConnectionResetError, BrokenPipeError):
            pass  # the generator closed with echoes in flight: same as EOF here
        self.selector.unregister(conn)
        self.conns.remove(conn)
        conn.close()

    def stop(self) -> None:
        self.wake_w.send(b"x")
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        for sock in [*self.conns, self.listener, self.wake_r, self.wake_w]:
            sock.close()
        self.selector.close()


@pytest.fixture(
    params=[
        "python",
        pytest.param(
            "c",
            marks=pytest.mark.skipif(_cengine.find_compiler() is None, reason="no C compiler here"),
        ),
    ]
)
def engine(request: pytest.FixtureRequest) -> str:
    """Each engine of the generator: the behaviour tests below run once per engine."""
    return str(request.param)


@pytest.fixture
def echo_server() -> Iterator[ThreadedEchoServer]:
    server = ThreadedEchoServer()
    yield server
    server.stop()


@pytest.fixture
def subprocess_echo_port() -> Iterator[int]:
    # A server in another process, for the test that forks: forking a process that
    # runs threads (the in-test server) is fragile.
    proc = subprocess.Popen(BASELINE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert "listening on tcp://127.0.0.1:" in line, line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def _tiny_load(
    port: int,
    *,
    host: str = "127.0.0.1",
    connections: int = 2,
    size: int = 64,
    duration: float = 0.3,
    pipeline: int = 1,
    processes: int = 1,
    connect_timeout: float = 5.0,
    engine: str = "python",
) -> LoadResult:
    return run_load(
        host,
        port,
        connections=connections,
        size=size,
        duration=duration,
        warmup=0.1,
        pipeline=pipeline,
        processes=processes,
        connect_timeout=connect_timeout,
        engine=engine,
    )


def test_run_load_counts_round_trips_without_errors(
    echo_server: ThreadedEchoServer, engine: str
) -> None:
    result = _tiny_load(echo_server.port, engine=engine)
    assert result.engine == engine
    assert result.errors == 0, dict(result.error_kinds)
    assert result.round_trips > 0
    assert result.rtps > 0
    assert result.connections == 2
    assert 0 < result.p50_us <= result.p90_us <= result.p99_us <= result.p999_us <= result.max_us
    assert result.connect_ms is not None
    assert result.first_echo_ms is not None
    assert result.connect_ms <= result.first_echo_ms
    assert result.cpu_seconds >= 0
    json.dumps(result.to_dict())


def test_run_load_drives_an_ipv6_loopback_server(engine: str) -> None:
    try:
        server = ThreadedEchoServer(host="::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        result = _tiny_load(server.port, host="::1", engine=engine)
    finally:
        server.stop()
    assert result.errors == 0, dict(result.error_kinds)
    assert result.round_trips > 0


def test_run_load_counts_extra_echoed_bytes_as_mismatch(engine: str) -> None:
    # Every byte twice: the first copy is right, the second is more than was sent.
    server = ThreadedEchoServer(transform=lambda data: data + data)
    try:
        result = _tiny_load(server.port, engine=engine)
    finally:
        server.stop()
    assert result.error_kinds.get("mismatch") == 2


def test_run_load_counts_corrupted_echo_as_error(engine: str) -> None:
    server = ThreadedEchoServer(transform=lambda data: bytes(b ^ 1 for b in data))
    try:
        result = _tiny_load(server.port, engine=engine)
    finally:
        server.stop()
    assert result.errors > 0
    assert result.error_kinds.get("mismatch") == 2
    assert result.round_trips == 0
    assert result.first_echo_ms is None


def test_run_load_keeps_a_pipeline_of_messages_in_flight(
    echo_server: ThreadedEchoServer, engine: str
) -> None:
    result = _tiny_load(echo_server.port, pipeline=4, size=3000, engine=engine)
    assert result.errors == 0, dict(result.error_kinds)
    assert result.round_trips > 0
    assert result.pipeline == 4


def test_run_load_thins_latency_samples_past_the_cap(
    echo_server: ThreadedEchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_load_worker, "_SAMPLE_CAP", 8)
    result = _tiny_load(echo_server.port)  # the Python engine's cap (the C one: its tests)
    assert result.errors == 0
    assert result.round_trips > 8
    assert 0 < result.p50_us <= result.max_us


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.1", "0.0.0.0", "example.com", ""])
def test_run_load_refuses_a_host_that_is_not_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_load(host, 9, connections=1, size=1, duration=0.1)


def test_run_load_counts_refused_connections(engine: str) -> None:
    # A bound socket that does not listen: connects to its port are refused, and no
    # other process can take the port meanwhile.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        result = _tiny_load(placeholder.getsockname()[1], connections=3, engine=engine)
    assert result.error_kinds.get("connect:ECONNREFUSED") == 3
    assert result.round_trips == 0
    assert result.connect_ms is None


def test_run_load_ends_by_itself_when_the_server_never_answers(engine: str) -> None:
    # The kernel completes the handshakes into the backlog, but nobody ever accepts.
    # real sleep: the generator's deadlines are wall-clock by design; this run lasts
    # warmup + connect_timeout + duration, about 0.6 s.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        started = time.monotonic()
        result = _tiny_load(
            silent.getsockname()[1], duration=0.2, connect_timeout=0.3, engine=engine
        )
        elapsed = time.monotonic() - started
    slack = _cengine._EXIT_SLACK if engine == "c" else 2.0
    assert elapsed < 0.1 + 0.2 + 0.3 + slack  # the documented hard stop, not a speed
    assert result.error_kinds.get("no_first_echo") == 2
    assert result.round_trips == 0
    assert result.first_echo_ms is None


def test_run_load_runs_several_workers_and_merges_them(
    subprocess_echo_port: int, engine: str
) -> None:
    result = _tiny_load(subprocess_echo_port, connections=5, processes=2, pipeline=2, engine=engine)
    assert result.errors == 0, dict(result.error_kinds)
    assert result.processes == 2
    assert result.connections == 5
    assert result.round_trips > 0
    assert result.first_echo_ms is not None


def test_bench_script_prints_a_command_against_the_baseline() -> None:
    command = [
        sys.executable,
        str(REPO / "scripts" / "bench.py"),
        *("--servers", "trio.serve_tcp", "--runs", "1", "--duration", "0.3", "--warmup", "0.1"),
        *("--connections", "1,50", "--paired", "0", "--vs", "trio.serve_tcp"),
        *("--command", f"candidate={shlex.join(BASELINE)}"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    assert "vs trio.serve_tcp" in done.stdout
    assert any(line.split()[:2] == ["50", "candidate"] for line in done.stdout.splitlines())


def test_bench_script_json_has_a_ratio_per_load() -> None:
    command = [
        sys.executable,
        str(REPO / "scripts" / "bench.py"),
        *("--servers", "trio.serve_tcp", "--runs", "1", "--duration", "0.3", "--warmup", "0.1"),
        *("--connections", "1,50", "--paired", "0", "--json", "--vs", "trio.serve_tcp"),
        *("--command", f"candidate={shlex.join(BASELINE)}"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    rows = [(r["connections"], r["server"]) for r in doc["rows"] if r["server"] == "candidate"]
    assert rows == [(1, "candidate"), (50, "candidate")]
    assert all(r["vs"]["trio.serve_tcp"] is not None for r in doc["rows"])
    assert all(r["server_us_per_rt"] is not None for r in doc["rows"])
