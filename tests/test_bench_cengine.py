"""Tests of the C engine of the load generator (`triosrv.bench._cengine`, ``_cload.c``).

The C tests run `run_load(engine="c")` at a tiny size against the echo servers of
test_bench_load.py and check what it counts and that it ends by itself; they are skipped
only when this machine has no C compiler. The engine choice (``auto`` falls back to
Python, ``c`` fails in one line) is tested with a PATH that holds no compiler, or a fake
one. Every build goes to a temporary cache directory, never the user's. No test asserts
a speed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from triosrv._server_processes import machine_facts, machine_lines
from triosrv.bench import (
    LoadEngineError,
    PairedResult,
    _cengine,
    run_load,
    run_paired,
    swapped,
)
from triosrv.bench._load import resolve_engine

from .test_bench_load import ThreadedEchoServer

SOURCE = Path(_cengine.__file__).with_name("_cload.c")
needs_cc = pytest.mark.skipif(_cengine.find_compiler() is None, reason="no C compiler here")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # One build per module, in a directory of its own; the in-process memo of checked
    # binaries is kept apart too, so that no test sees another's binary by accident.
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        patch.setattr(_cengine, "_checked", set())
        yield cache


@pytest.fixture
def echo_server() -> Iterator[ThreadedEchoServer]:
    server = ThreadedEchoServer()
    yield server
    server.stop()


def _no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)


def _fake_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    # A "cc" that is a shell script: the build step runs it like any compiler.
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: str(fake) if name == "cc" else None)


@needs_cc
def test_cload_source_compiles_without_warnings(tmp_path: Path) -> None:
    compiler = _cengine.find_compiler()
    assert compiler is not None
    flags = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]
    done = subprocess.run(
        [compiler, *flags, "-o", str(tmp_path / "cload"), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@needs_cc
def test_cengine_thins_latency_samples_past_the_cap(
    echo_server: ThreadedEchoServer, tmp_path: Path
) -> None:
    # A build with a cap of 8 samples: the run must keep at most 8 and thin the rest.
    compiler = _cengine.find_compiler()
    assert compiler is not None
    binary = tmp_path / "cload-cap8"
    subprocess.run(
        [compiler, "-O2", "-DSAMPLE_CAP=8", "-o", str(binary), str(SOURCE)], check=True, timeout=120
    )
    [stats] = _cengine.run_c_engine(
        binary,
        ("127.0.0.1", echo_server.port),
        shares=[2],
        size=64,
        pipeline=1,
        warmup=0.1,
        duration=0.3,
        connect_timeout=5.0,
        seed=0,
    )
    assert stats.round_trips > 8
    assert stats.mask > 0
    assert 0 < len(stats.samples) // 8 <= 8


@needs_cc
def test_engine_binary_is_cached_by_source_and_compiler(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _cengine.engine_binary()
    assert first.parent == private_cache / "triosrv"
    built_at = first.stat().st_mtime_ns
    monkeypatch.setattr(_cengine, "_checked", set())
    assert _cengine.engine_binary() == first
    assert first.stat().st_mtime_ns == built_at  # found in the cache, not rebuilt
    monkeypatch.setattr(_cengine, "_CFLAGS", (*_cengine._CFLAGS, "-g"))
    assert _cengine.engine_binary() != first  # other flags, another binary


def test_run_load_auto_falls_back_to_python_without_a_compiler(
    echo_server: ThreadedEchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_compiler(monkeypatch)
    result = run_load(
        "127.0.0.1", echo_server.port, connections=2, size=64, duration=0.2, warmup=0.1
    )
    assert result.engine == "python"
    assert result.errors == 0, dict(result.error_kinds)
    assert result.round_trips > 0


@needs_cc
def test_machine_facts_name_the_engine_auto_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = machine_facts(None, load_engine=resolve_engine())
    assert facts["load_engine"] == "c"
    assert "load generator: triosrv bench load, c engine" in machine_lines(facts)
    _no_compiler(monkeypatch)
    assert machine_facts(None, load_engine=resolve_engine())["load_engine"] == "python"
    assert "load_engine" not in machine_facts(None)


def test_run_load_c_without_a_compiler_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_compiler(monkeypatch)
    with pytest.raises(LoadEngineError, match="needs a C compiler") as caught:
        run_load("127.0.0.1", 9, connections=1, size=1, duration=0.1, engine="c")
    assert "\n" not in str(caught.value)


def test_run_load_refuses_an_unknown_engine() -> None:
    with pytest.raises(ValueError, match="engine must be one of auto, c, python"):
        run_load("127.0.0.1", 9, connections=1, size=1, duration=0.1, engine="rust")


def test_engine_binary_shows_the_compilers_first_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_compiler(
        tmp_path,
        monkeypatch,
        "echo 'In function main:' >&2\necho '_cload.c:1:1: error: boom' >&2\nexit 1\n",
    )
    with pytest.raises(
        LoadEngineError, match=r"did not build with .*: _cload\.c:1:1: error: boom$"
    ):
        _cengine.engine_binary()


def test_run_load_auto_falls_back_to_python_when_the_build_fails(
    echo_server: ThreadedEchoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_compiler(tmp_path, monkeypatch, "echo 'error: no' >&2\nexit 1\n")
    result = run_load(
        "127.0.0.1", echo_server.port, connections=1, size=64, duration=0.2, warmup=0.1
    )
    assert result.engine == "python"


def _fake_engine(tmp_path: Path, script: str) -> Path:
    fake = tmp_path / "fake-cload"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


def _run_fake(binary: Path) -> None:
    _cengine.run_c_engine(
        binary,
        ("127.0.0.1", 9),
        shares=[1, 1],
        size=1,
        pipeline=1,
        warmup=0.0,
        duration=0.1,
        connect_timeout=0.1,
        seed=0,
    )


def test_run_c_engine_reports_a_failed_process_in_one_line(tmp_path: Path) -> None:
    binary = _fake_engine(tmp_path, "echo '_cload: epoll_create1: out of memory' >&2\nexit 1\n")
    with pytest.raises(LoadEngineError, match=r"exit status 1\): _cload: epoll_create1: out of"):
        _run_fake(binary)


def test_run_c_engine_rejects_output_that_is_not_a_result(tmp_path: Path) -> None:
    with pytest.raises(LoadEngineError, match="no valid result"):
        _run_fake(_fake_engine(tmp_path, "echo '{\"round_trips\": 1}'\n"))


def test_run_c_engine_kills_a_process_past_its_hard_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # exec: the pid we kill is the sleeping process itself, not a shell above it.
    # real sleep: the hard stop is wall-clock by design (0.2 s run + 0.3 s slack here).
    monkeypatch.setattr(_cengine, "_EXIT_SLACK", 0.3)
    binary = _fake_engine(tmp_path, "exec sleep 30\n")
    started = time.monotonic()
    with pytest.raises(LoadEngineError, match="did not finish by its hard stop"):
        _run_fake(binary)
    assert time.monotonic() - started < 10  # killed, not waited for 30 s


def test_bench_load_cli_names_the_engine(echo_server: ThreadedEchoServer) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "triosrv", "bench", "load", "--engine", "python"),
            *("--target", f"127.0.0.1:{echo_server.port}", "--connections", "2"),
            *("--duration", "0.2", "--warmup", "0.1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "(python engine)" in done.stdout


def test_bench_load_cli_engine_c_without_a_compiler_exits_1(tmp_path: Path) -> None:
    # An empty directory as PATH: no cc, gcc or clang can be found.
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "triosrv", "bench", "load", "--engine", "c"),
            *("--target", "127.0.0.1:9", "--duration", "0.1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: the C load engine needs a C compiler (cc, gcc or clang) on PATH; "
        "install one, or use the Python engine (--engine python)"
    ]


# -- paired mode (run_paired) -------------------------------------------------------------


@needs_cc
def test_run_paired_alternates_windows_and_parks_the_other_server() -> None:
    # Each server notes when each message reaches it. Past the warm-up (both get load
    # until every connection has echoed once) the arrivals must come in blocks, one per
    # window: a server whose window is over gets nothing until its next one. Without the
    # parking, the two would interleave thousands of times.
    arrivals: list[tuple[float, str]] = []

    def noting(name: str) -> Callable[[bytes], bytes]:
        def transform(data: bytes) -> bytes:
            arrivals.append((time.monotonic(), name))
            return data

        return transform

    a, b = ThreadedEchoServer(noting("A")), ThreadedEchoServer(noting("B"))
    try:
        result = run_paired(
            "127.0.0.1", a.port, b.port, connections=3, duration=1.0, window=0.1, warmup=0
        )
    finally:
        a.stop()
        b.stop()
    servers = [server for server, _, _ in result.windows]
    assert servers == [i % 2 for i in range(len(servers))]  # A, B, A, B, ...
    assert len(servers) >= 9
    assert sum(seconds for _, _, seconds in result.windows) >= 1.0
    assert all(round_trips > 0 for _, round_trips, _ in result.windows)
    assert result.errors == 0 and result.cpu_seconds > 0
    # The warm-up runs in 10 ms slices at the start of the ~1.1 s: skip its first tenth.
    arrivals.sort()
    start = arrivals[0][0] + 0.1 * (arrivals[-1][0] - arrivals[0][0])
    later = [name for t, name in arrivals if t >= start]
    blocks = 1 + sum(x != y for x, y in itertools.pairwise(later))
    assert blocks <= len(servers)
    assert len(result.ratios) == servers.count(1) and result.ratio is not None


def test_paired_ratio_compares_each_b_window_with_the_a_windows_beside_it() -> None:
    def paired(*rates: float) -> PairedResult:
        windows = tuple((i % 2, int(rate), 1.0) for i, rate in enumerate(rates))
        return PairedResult(
            connections=1,
            size=64,
            window=1.0,
            windows=windows,
            errors=0,
            error_kinds={},
            cpu_seconds=0.0,
        )

    # A drifts up 20 per window and B sits halfway: B is as fast as A.
    drifting = paired(100, 110, 120, 130, 140)
    assert drifting.ratios == [1.0, 1.0] and drifting.ratio == 1.0
    assert drifting.rates(0) == [100, 120, 140] and drifting.rates(1) == [110, 130]
    # B 10% faster; a B window at the end has one A window beside it.
    faster = paired(100, 110, 100, 110)
    assert faster.ratios == pytest.approx([1.1, 1.1])
    assert faster.quartiles == pytest.approx((1.1, 1.1))
    assert paired(100).ratio is None and paired(100).quartiles is None
    assert paired(0, 50, 0).ratios == []  # no rate to compare with
    # The same two the other way round: B (now A) at 100, A (now B) at 80 -> 0.8, 1/0.8.
    both = swapped(faster, paired(100, 80, 100))
    assert both["windows_compared"] == 3
    assert both["ratio"] == pytest.approx(1.1)  # the median of 1.1, 1.1, 1.25


def test_run_paired_refuses_what_is_not_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_paired("192.0.2.1", 1, 2, connections=1)
    with pytest.raises(ValueError, match="window"):
        run_paired("127.0.0.1", 1, 2, connections=1, window=0)
