"""The diagnostics options of ``triosrv listen`` at the edge: bad values, bind errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .diag_helpers import TRIOSRV


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRIOSRV, *args], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--metrics", "nowhere"], "--metrics"),
        (["--metrics", "unix:/tmp/m.sock"], "--metrics"),
        (["--warn-blocking", "0"], "--warn-blocking"),
        (["--warn-blocking", "soon"], "--warn-blocking"),
    ],
)
def test_listen_bad_diagnostics_option_exits_2_naming_it(args: list[str], option: str) -> None:
    result = run("listen", "--port", "0", *args)
    assert result.returncode == 2
    assert option in result.stderr
    assert "Traceback" not in result.stderr


def test_listen_control_bind_failure_is_one_line_exit_1() -> None:
    result = run("listen", "--port", "0", "--control", "/nonexistent-dir/c.sock")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: cannot bind unix:/nonexistent-dir/c.sock: no such file or directory"
    )
    assert "Traceback" not in result.stderr


def test_cli_help_lists_the_diagnostics_commands() -> None:
    result = run("--help")
    assert "diag" in result.stdout and "status" in result.stdout
    assert "system" in run("diag", "--help").stdout
    assert sys.executable  # the same interpreter runs the subprocesses
