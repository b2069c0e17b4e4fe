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
