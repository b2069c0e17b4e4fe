"""Tests of the ``triosrv bench`` tools and scripts/bench.py, each at a tiny size.

They check the shape of what each tool prints and that it cleans up (the autouse
``no_leaks`` fixture checks fds and threads); no test asserts a speed.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from triosrv._server_processes import (
    baseline_cmd,
    cpu_share_during,
    listen_has_backend,
    running_server,
)
from triosrv.bench import BackendsPlan, _cengine, bench_backends, bench_threads_vs_tasks
from triosrv.bench._conns import ConnectionPool, ping_pong
from triosrv.bench._loadcmd import parse_target
from triosrv.bench._report import progress
from triosrv.bench._threads_vs_tasks import thread_switch_us, trio_switch_us

REPO = Path(__file__).resolve().parent.parent
BASELINE = baseline_cmd()
TRIOSRV = [sys.executable, "-m", "triosrv"]
TINY_PLAN = BackendsPlan(
    wait_ns=(2, 4),
    max_cap=8,
    echo_connections=(1, 2),
    echo_duration=0.1,
    echo_warmup=0.05,
    paired_duration=0.4,
    paired_window=0.05,
    ping_count=50,
    ping_seconds=0.05,
    idle_seconds=0.05,
    idle_connections=2,
    cancel_connections=4,
    cancel_timeout=10.0,
)
needs_backends = pytest.mark.skipif(
    not listen_has_backend(), reason="triosrv listen has no --backend option in this tree"
)


@pytest.fixture
def echo_port() -> Iterator[int]:
    with running_server("baseline", BASELINE, None) as server:
        yield server.port


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRIOSRV, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize(
    ("text", "expected"), [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:9", ("::1", 9))]
)
def test_parse_target_accepts_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "host:port", "[::1]80"])
def test_parse_target_refuses_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_target(text)


def test_progress_draws_and_joins_its_thread_when_enabled() -> None:
    out = io.StringIO()
    with progress("work", 0.05, stream=out, enabled=True):
        # real sleep: the bar is drawn by a thread on a wall-clock tick (0.2 s)
        time.sleep(0.5)  # real sleep: see the comment above
    assert "work [" in out.getvalue()
    assert out.getvalue().endswith("\r")


def test_progress_is_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    with progress("work", 0.05, stream=out):
        pass
    assert out.getvalue() == ""


def test_bench_load_prints_rates_latencies_errors_and_cpu(echo_port: int) -> None:
    done = _run(
        *("bench", "load", "--target", f"127.0.0.1:{echo_port}", "--connections", "2"),
        *("--duration", "0.2", "--warmup", "0.05"),
    )
    assert done.returncode == 0, done.stderr
    for label in ("round trips/s", "p99.9", "errors          0", "generator CPU"):
        assert label in done.stdout
    assert "[" not in done.stderr  # no progress bar when stdout is not a terminal


def test_bench_load_json_has_every_figure(echo_port: int) -> None:
    done = _run(
        *("bench", "load", "--target", f"127.0.0.1:{echo_port}", "--connections", "3"),
        *("--duration", "0.2", "--warmup", "0.05", "--pipeline", "2", "--json"),
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["connections"] == 3
    assert doc["errors"] == 0
    assert doc["round_trips"] > 0
    assert {"p50_us", "p90_us", "p99_us", "p999_us", "cpu_seconds", "warnings"} <= set(doc)


def test_bench_load_refuses_a_bad_target_in_one_line() -> None:
    done = _run("bench", "load", "--target", "nowhere", "--duration", "0.1")
    assert done.returncode == 2
    assert "HOST:PORT" in done.stderr


def test_connection_pool_opens_served_connections_and_sees_them_closed() -> None:
    with running_server("baseline", BASELINE, None) as server:
        pool = ConnectionPool(server.port, batch=3)
        try:
            assert pool.open_served(7) == 7
            assert pool.failure is None
            assert len(ping_pong(server.port, count=20, max_seconds=5.0)) == 20
            server.proc.kill()  # by pid: our own child
            assert pool.wait_all_closed(10.0) is not None
        finally:
            pool.close()


def test_connection_pool_stops_at_a_refused_connection() -> None:
    with socket.socket() as placeholder:  # bound, not listening: connects are refused
        placeholder.bind(("127.0.0.1", 0))
        pool = ConnectionPool(placeholder.getsockname()[1], timeout=5.0)
        try:
            assert pool.open_served(4) == 0
        finally:
            pool.close()
    assert pool.failure is not None
    assert "refused" in pool.failure.lower()


def test_cpu_share_during_measures_the_process_and_none_once_it_is_gone() -> None:
    for fine in (False, True):
        # Long enough for a few clock ticks (the coarse reading counts in 10 ms).
        result, share = cpu_share_during(os.getpid(), _spin, fine=fine)
        assert result > 0
        assert share is not None and share > 0  # this process ran the loop meanwhile
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert cpu_share_during(gone.pid, lambda: "ran") == ("ran", None)
    assert cpu_share_during(gone.pid, lambda: "ran", fine=True) == ("ran", None)


def test_cpu_share_during_keeps_the_time_of_threads_that_ended() -> None:
    # A thread-per-connection server's threads end with the load's connections: the
    # default reading still counts what they used.
    def in_a_thread() -> int:
        results: list[int] = []
        thread = threading.Thread(target=lambda: results.append(_spin()))
        thread.start()
        thread.join()
        return results[0]

    started = time.monotonic()
    _result, share = cpu_share_during(os.getpid(), in_a_thread)
    wall = time.monotonic() - started
    # The thread used 0.2 s of CPU; lost with it, the share would be near zero.
    assert share is not None and share * wall > 0.1


def _spin() -> int:
    # Busy for about 0.2 s of CPU: a fixed amount of work would be too short on a fast
    # machine for clock ticks to see it.
    deadline = time.process_time() + 0.2
    loops = 0
    while time.process_time() < deadline:
        loops += 1
    return loops


def test_switch_benchmarks_measure_a_positive_cost() -> None:
    assert thread_switch_us(200) > 0
    assert trio_switch_us(200) > 0


def test_bench_backends_reports_every_row_for_trio() -> None:
    out = io.StringIO()
    doc = bench_backends(["trio"], TINY_PLAN, out=out)
    row = doc["backends"][0]
    assert row["max_served"] == 8
    assert not row["max_limited"]
    assert set(row["wait_us"]) == {"2", "4"}
    assert all(v is not None and v > 0 for v in row["wait_us"].values())
    assert set(row["echo"]) == {"1", "2"}
    assert row["idle_cpu"] is not None
    assert row["cancel"]["connections"] == 4
    assert row["cancel"]["ms"] is not None
    assert all(e["rtps"] > 0 and e["cpu_us_per_rt"] > 0 for e in row["echo"].values())
    assert doc["baseline"] == {"server": "trio.serve_tcp", "paired": True}
    # Paired windows with the baseline, each way round: every count has its ratio.
    assert set(row["vs_baseline"]) == {"1", "2"}
    for versus in row["vs_baseline"].values():
        assert versus["errors"] == 0 and versus["windows_compared"] >= 2
        assert 0 < versus["ratio"] < 10
    text = out.getvalue()
    for label in ("connections served", "wait us, N=4 idle", "echo p99 us, C=2", "cancel ms"):
        assert label in text
    cpu_lines = [line for line in text.splitlines() if line.startswith("echo CPU us/rt, C")]
    assert [line.split()[-1] for line in cpu_lines] == [
        f"{row['echo'][c]['cpu_us_per_rt']:.1f}" for c in ("1", "2")
    ]
    ratio_lines = [
        line for line in text.splitlines() if line.startswith("echo vs trio.serve_tcp, C")
    ]
    assert [line.split()[3] for line in ratio_lines] == ["C=1", "C=2"]
    for line, c in zip(ratio_lines, ("1", "2"), strict=True):
        assert line.split()[-1] == f"{row['vs_baseline'][c]['ratio']:.2f}x"
    assert "in alternating windows, each way round" in text


def test_bench_backends_without_the_c_engine_says_why_it_has_no_ratios(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Paired windows need the C engine: without it no baseline runs, and the legend
    # says so instead of printing ratios measured some other way.
    import triosrv.bench._backends_report as report

    monkeypatch.setattr(report, "resolve_engine", lambda: "python")
    out = io.StringIO()
    plan = attrs.evolve(TINY_PLAN, echo_connections=(1,), wait_ns=(2,))
    doc = bench_backends(["trio"], plan, out=out)
    assert doc["baseline"] == {"server": "trio.serve_tcp", "paired": False}
    assert doc["backends"][0]["vs_baseline"] == {}
    text = out.getvalue()
    assert "echo CPU us/rt, C=1" in text
    assert not any(line.startswith("echo vs trio.serve_tcp, C") for line in text.splitlines())
    assert "not measured, paired windows need the C load engine" in text


def test_plot_backends_writes_a_png(tmp_path: Path) -> None:
    # In a child process: matplotlib keeps its font files open for the process's life.
    pytest.importorskip("matplotlib")
    row = {"backend": "poll", "wait_us": {"10": 30.0, "100": 41.0}, "echo": {"1": {"rtps": 9e3}}}
    doc = {"machine": {"cpu_count": 2, "kernel": "Linux", "python": "3"}, "backends": [row]}
    png = tmp_path / "backends.png"
    code = (
        "import json, sys; from triosrv.bench._plot import plot_backends; "
        "plot_backends(json.loads(sys.argv[1]), sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", code, json.dumps(doc), str(png)], check=True, timeout=60)
    assert png.read_bytes().startswith(b"\x89PNG")


def test_plot_threads_vs_tasks_writes_a_png(tmp_path: Path) -> None:
    # In a child process, as above; a failed count (no memory figure) is left out.
    pytest.importorskip("matplotlib")
    runs = [
        {"connections": 10, "open_ms": 3.0, "rss_per_connection": 5000.0},
        {"connections": 100, "open_ms": None, "rss_per_connection": None},
    ]
    doc = {
        "machine": {"cpu_count": 2, "kernel": "Linux", "python": "3"},
        "models": [{"backend": "trio", "kind": "tasks", "runs": runs}],
    }
    png = tmp_path / "tvt.png"
    code = (
        "import json, sys; from triosrv.bench._plot import plot_threads_vs_tasks; "
        "plot_threads_vs_tasks(json.loads(sys.argv[1]), sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", code, json.dumps(doc), str(png)], check=True, timeout=60)
    assert png.read_bytes().startswith(b"\x89PNG")


def test_bench_threads_vs_tasks_reports_memory_and_open_time() -> None:
    out = io.StringIO()
    doc = bench_threads_vs_tasks(
        counts=(10,), switch_round_trips=100, models=[("trio", "tasks")], out=out
    )
    run = doc["models"][0]["runs"][0]
    assert run["opened"] == 10
    assert run["open_ms"] is not None
    assert run["rss_per_connection"] is not None
    assert set(doc["switch_us"]) == {"threads", "tasks"}
    assert "memory per idle conn, N=10" in out.getvalue()


def test_bench_cpu_reports_each_mode() -> None:
    done = _run(
        *("bench", "cpu", "--work-ms", "1", "--clients", "2"),
        *("--duration", "0.3", "--warmup", "0.1", "--json"),
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    modes = [m["mode"] for m in doc["modes"]] + list(doc["skipped"])
    assert sorted(modes) == ["inline", "process", "thread"]
    for mode in doc["modes"]:
        assert mode["requests"] > 0
        assert mode["canary_samples"] > 0
        assert mode["canary_p50_ms"] <= mode["canary_p99_ms"]


@needs_backends
def test_bench_backends_cli_measures_the_select_limit() -> None:
    done = _run(
        *("bench", "backends", "--backend", "select", "--backend", "epoll", "--quick"),
        *("--connections", "1", "--json"),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = {r["backend"]: r for r in json.loads(done.stdout)["backends"]}
    assert rows["select"]["max_limited"]
    assert rows["select"]["max_served"] < 1024
    assert rows["epoll"]["max_served"] > 1024


@needs_backends
def test_bench_threads_vs_tasks_cli_compares_threads_and_tasks() -> None:
    done = _run("bench", "threads-vs-tasks", "--connections", "20", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [m["kind"] for m in doc["models"]] == ["threads", "tasks"]
    assert all(m["runs"][0]["opened"] == 20 for m in doc["models"])


def test_bench_script_measures_every_peer_and_ratios() -> None:
    command = [
        sys.executable,
        str(REPO / "scripts" / "bench.py"),
        *("--runs", "1", "--duration", "0.15", "--warmup", "0.05", "--connections", "2"),
        *("--paired", "0", "--json"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    names = {row["server"] for row in doc["rows"]} | set(doc["skipped"])
    assert {"trio.serve_tcp", "asyncio streams", "asyncio Protocol", "triosrv default"} <= names
    assert {"anyio (trio)", "uvloop Protocol", "triosrv epoll", "bare epoll loop"} <= names
    by_name = {row["server"]: row for row in doc["rows"]}
    assert by_name["trio.serve_tcp"]["vs"]["trio.serve_tcp"] == pytest.approx(1.0)
    assert by_name["asyncio streams"]["vs"]["asyncio streams"] == pytest.approx(1.0)
    assert all(row["first_echo_ms"] > 0 for row in doc["rows"])
    assert all(row["errors"] == 0 for row in doc["rows"])
    for row in doc["rows"]:  # one run each: the median is that run's CPU per round trip
        [run] = row["runs"]
        assert row["server_us_per_rt"] == pytest.approx(run["server_cpu"] * 1e6 / run["rtps"])
        assert row["server_us_per_rt"] > 0
    assert doc["machine"]["cpu_count"] >= 1


def test_bare_epoll_peer_echoes_exactly_through_partial_sends() -> None:
    # 16 MiB, more than the kernel's buffers hold (the server's send buffer grows to
    # 4 MiB), read back through a 64 KiB receive buffer while still being sent: the
    # server's sends outrun the reader, and the loop must keep unsent tails (with the
    # tail dropped this test fails, checked 5 times out of 5).
    payload = random.Random(4).randbytes(16 * 1024 * 1024)
    command = [sys.executable, str(REPO / "scripts" / "peers" / "bare_epoll.py")]
    with running_server("bare", command, None) as server:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", server.port))
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            received = bytearray()
            while len(received) < len(payload):
                received += sock.recv(65536)
            sender.join()
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""  # EOF answered with EOF
        assert received == payload


@pytest.mark.parametrize(
    "peer",
    [["asyncio_streams.py"], ["asyncio_protocol.py"], ["asyncio_protocol.py", "--uvloop"]],
    ids=" ".join,
)
def test_asyncio_peers_hold_a_burst_of_connects_in_their_backlog(peer: list[str]) -> None:
    # scripts/bench.py opens up to 1000 connections at once. With the server stopped (so
    # that it accepts none), every connect the listen backlog holds completes at once;
    # with asyncio's default backlog of 100 only 101 of these 300 would (the others'
    # SYNs are dropped until a retry a second later).
    command = [sys.executable, str(REPO / "scripts" / "peers" / peer[0]), *peer[1:]]
    with running_server(peer[0], command, None) as server:
        os.kill(server.proc.pid, signal.SIGSTOP)
        socks: list[socket.socket] = []
        try:
            for _ in range(300):
                sock = socket.socket()
                socks.append(sock)
                sock.setblocking(False)
                assert sock.connect_ex(("127.0.0.1", server.port)) == errno.EINPROGRESS
            pending = set(socks)
            deadline = time.monotonic() + 0.5  # before any SYN retry (1 s)
            while pending and time.monotonic() < deadline:
                _, done, _ = select.select([], list(pending), [], 0.05)
                pending.difference_update(done)
            connected = [s for s in socks if s not in pending]
            assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in connected)
            assert len(connected) == 300
        finally:
            for sock in socks:
                sock.close()
            os.kill(server.proc.pid, signal.SIGCONT)


def _run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(REPO / "scripts" / name), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _run_peers(*args: str) -> subprocess.CompletedProcess[str]:
    return _run_script("bench.py", *args)


@pytest.mark.parametrize("paired", ["0", "0.6"])
def test_bench_script_measures_only_the_servers_asked_and_checks_their_targets(
    paired: str,
) -> None:
    done = _run_peers(
        *("--runs", "1", "--duration", "0.15", "--warmup", "0.05", "--connections", "50"),
        *("--servers", "triosrv default,trio.serve_tcp", "--paired", paired, "--json"),
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert {row["server"] for row in doc["rows"]} == {"triosrv default", "trio.serve_tcp"}
    (target,) = doc["targets"]  # the uvloop target needs both of its servers
    assert target["target"] == "triosrv default >= 1x trio.serve_tcp at C=50"
    assert target["met"] == (target["ratio"] >= 1.0)
    by_name = {row["server"]: row for row in doc["rows"]}
    per_round = by_name["triosrv default"]["vs"]["trio.serve_tcp"]
    assert target["per_round_ratio"] == pytest.approx(per_round)
    if paired == "0":
        assert (doc["paired"], target["method"]) == ([], "per-round")
        assert target["ratio"] == pytest.approx(per_round)
        return
    # Judged on the windows that alternated between the two (trio.serve_tcp first).
    (windows,) = doc["paired"]
    assert (windows["candidate"], windows["reference"]) == ("triosrv default", "trio.serve_tcp")
    for half in (windows["reference_first"], windows["candidate_first"]):
        assert [w[0] for w in half["windows"]] == [i % 2 for i in range(len(half["windows"]))]
        assert len(half["windows"]) >= 2 and half["errors"] == 0
    assert target["method"] == "paired windows"
    assert target["ratio"] == windows["ratio"]
    # Both halves count, the second one inverted (there the candidate was A).
    assert (
        windows["windows_compared"]
        == len(windows["reference_first"]["windows"]) // 2
        + len(windows["candidate_first"]["windows"]) // 2
    )


def test_bench_script_refuses_an_unknown_server_in_one_line() -> None:
    done = _run_peers("--servers", "nginx")
    assert done.returncode == 2
    assert "unknown server(s): nginx" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(_cengine.find_compiler() is None, reason="no C compiler here")
def test_bench_paired_compares_two_commands_both_ways_round() -> None:
    bare = f"exec {sys.executable} {REPO / 'scripts' / 'peers' / 'bare_epoll.py'}"
    done = _run_script(
        "bench_paired.py",
        *("--a", bare, "--b", bare, "--runs", "2", "--duration", "0.8"),
        *("--connections", "3", "--window", "0.1", "--json"),
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    first, second = doc["runs"]
    assert (first["b_first"], second["b_first"]) == (False, True)
    for run in (first, second):
        assert [w[0] for w in run["windows"]] == [i % 2 for i in range(len(run["windows"]))]
        assert len(run["windows"]) >= 6 and run["errors"] == 0
    # B/A: the first run's ratio as measured, the second's inverted (B went first).
    assert first["b_over_a"] == first["ratio"]
    assert second["b_over_a"] == pytest.approx(1 / second["ratio"])
    assert doc["median"] == pytest.approx((first["b_over_a"] + second["b_over_a"]) / 2)


def test_bench_paired_names_a_server_that_does_not_start() -> None:
    done = _run_script(
        "bench_paired.py", "--a", "exit 3", "--b", "exit 3", "--runs", "1", "--duration", "0.2"
    )
    assert done.returncode == 1
    assert done.stderr.startswith("bench_paired: ")


def test_bench_script_refuses_a_vs_server_it_does_not_measure() -> None:
    done = _run_peers("--servers", "trio.serve_tcp", "--vs", "triosrv epoll")
    assert done.returncode == 2
    assert done.stderr.strip() == "bench: --vs names a server not measured: triosrv epoll"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("nameonly", "--command takes NAME=CMD"),
        ("=python x.py", "--command takes NAME=CMD"),
        ("name=", "--command takes NAME=CMD"),
        ("name='unclosed", "No closing quotation"),
    ],
)
def test_bench_script_refuses_a_malformed_command_in_one_line(item: str, message: str) -> None:
    done = _run_peers("--command", item)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
