"""The import layers of DESIGN.md hold, checked by import-linter (contracts in pyproject.toml).

`lint-imports` runs in .ci/run too; running it here makes a broken layer fail the test
suite every engineer runs. The tampered copies prove the contracts can fail: each breaks
one rule in a copy of the package, put first on the import path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the project's contracts; on a copy under *package_parent* if
    given. No cache: a cache directory would land in the checkout."""
    env = dict(os.environ)
    if package_parent is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(package_parent), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=package_parent or ROOT,
        timeout=120,
        check=False,
    )


def test_layers_contracts_are_kept() -> None:
    done = lint_imports()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


TAMPERS = {
    # protocols/ are sans-IO: no trio, socket or clock (was an ast walk in test_protocols).
    "protocol imports trio": ("protocols/_echo.py", "import trio\n", "not allowed to import trio:"),
    "protocol imports socket": ("protocols/_echo.py", "import socket\n", "import socket"),
    "protocol reads the clock": ("protocols/_echo.py", "import time\n", "import time"),
    # The server never imports the tools built on it.
    "server imports a tool": (
        "_accept.py",
        "from .diagnostics import serve_control\n",
        "triosrv._accept is not allowed to import triosrv.diagnostics",
    ),
    "one tool imports another": (
        "testing/_leaks.py",
        "from ..chaos import _client\n",
        "triosrv.testing is not allowed to import triosrv.chaos",
    ),
    "lowlevel imports the server": (
        "lowlevel/_fd.py",
        "from .. import _server\n",
        "triosrv.lowlevel is not allowed to import triosrv._server",
    ),
    "config imports lowlevel": (
        "_config.py",
        "from . import lowlevel\n",
        "triosrv._config is not allowed to import triosrv.lowlevel",
    ),
    "a tool imports click": ("bench/_report.py", "import click\n", "import click"),
    # Every new module must be placed in a layer.
    "unplaced module": ("_newthing.py", "", "triosrv._newthing"),
}


@pytest.mark.parametrize("tamper", list(TAMPERS.values()), ids=list(TAMPERS))
def test_layers_contract_breaks_on(tmp_path: Path, tamper: tuple[str, str, str]) -> None:
    relative, line, named = tamper
    copy = tmp_path / "triosrv"
    shutil.copytree(ROOT / "triosrv", copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / relative).open("a") as module:
        module.write(line)
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout
    assert named in done.stdout, done.stdout
