"""Benchmark scripts are not tests; these only check that each runs at a tiny size."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no cc")
def test_bench_load_ceiling_script_runs_and_prints_the_ratio() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "bench_load_ceiling.py"),
            *("--runs", "1", "--duration", "0.3", "--connections", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ceiling ratio C / triosrv:" in done.stdout
    assert "x" in done.stdout.split("ceiling ratio C / triosrv:")[1].splitlines()[0]


@pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-benchmark") is None,
    reason="needs redis-server and redis-benchmark (Debian packages redis-server, redis-tools)",
)
def test_bench_minikv_script_runs_and_prints_the_ratios() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "bench_minikv.py"),
            *("--rounds", "2", "--requests", "300", "--clients", "5", "--no-pin"),
            *("--pipeline", "1", "--pipeline", "16", "--tests", "ping,set,get,incr"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("date ") and "redis-server 7" in lines[0]
    for test in ("PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"):
        for depth in ("1", "16"):
            row = next(line.split() for line in lines if line.split()[:2] == [test, depth])
            assert row[-1].endswith("x") and row[-2].endswith("x"), row
    assert sum("target" in line for line in lines) == 2
