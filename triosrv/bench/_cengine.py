"""The C engine of the load generator: build ``_cload.c`` once, run it, read its JSON.

Why a second engine: on loopback a round trip costs a generator about 6 us of kernel time,
and the Python engine (`_load_worker`) adds about 1 us of interpreter work to that, which
is enough to cap it below twice what triosrv's ``trio`` backend serves on one core. The C
program (``_cload.c``, shipped with the package; its header explains how it runs) has the
same design and pays only the kernel part.

Building: the first C compiler found on ``PATH`` (``cc``, ``gcc``, ``clang``) compiles the
source with ``-O2`` into ``$XDG_CACHE_HOME/triosrv`` (``~/.cache/triosrv`` by default).
The file name carries a hash of the source, the compiler's path and the flags, so an edit
or another compiler builds a new binary; it is compiled under a temporary name and renamed
into place, so a concurrent build or an interrupted one never leaves a half-written binary
where a run would pick it up. A fresh binary is run once with ``-V`` before it is trusted
(a cache on a ``noexec`` mount builds but cannot run).

Running: one process per share of the connections, all started at once, each with its own
deadlines and an ``alarm()`` as the last resort; this side kills (by pid) any process still
running ``_EXIT_SLACK`` seconds after the run should have ended, and always waits for it.
Each prints one JSON object, which becomes the `WorkerStats` the Python engine reports, so
`_load` merges both engines' results with the same code.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from array import array
from importlib import resources
from pathlib import Path
from typing import Any

from ._load_worker import WorkerStats, _errno_kind

__all__ = ["ENGINES", "LoadEngineError", "engine_binary", "run_c_engine", "run_c_paired"]

ENGINES = ("auto", "c", "python")
_COMPILERS = ("cc", "gcc", "clang")
_CFLAGS = ("-O2", "-std=gnu11")
_BUILD_TIMEOUT = 120.0  # seconds; a compile takes well under one
_CHECK_TIMEOUT = 10.0
_EXIT_SLACK = 6.0  # past warmup + connect_timeout + duration; the C alarm() fires at ~4

# Binaries built or checked by this process: later runs skip the check.
_checked: set[Path] = set()


class LoadEngineError(RuntimeError):
    """The C load engine cannot be built or run, or one of its processes failed."""


def _first_line(text: str) -> str:
    # The compiler's first error line says most; fall back to its first line at all.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[0]


def find_compiler() -> str | None:
    """The path of the first of ``cc``, ``gcc``, ``clang`` on PATH, or None."""
    for name in _COMPILERS:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def _cache_dir() -> Path:
    # The XDG base directory spec: a relative XDG_CACHE_HOME is invalid and ignored.
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "triosrv"


def _compile(compiler: str, source: bytes, binary: Path) -> None:
    # Compile exactly the bytes that were hashed, in a private directory next to the
    # target (the same file system, so the final rename is atomic).
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent, prefix=".build-") as workdir:
        source_path = Path(workdir) / "_cload.c"
        source_path.write_bytes(source)
        output = Path(workdir) / "cload"
        try:
            done = subprocess.run(
                [compiler, *_CFLAGS, "-o", str(output), str(source_path)],
                capture_output=True,
                text=True,
                timeout=_BUILD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LoadEngineError(
                f"the C load engine did not build: {compiler} ran over {_BUILD_TIMEOUT:g} s"
            ) from None
        if done.returncode != 0:
            raise LoadEngineError(
                f"the C load engine did not build with {compiler}: "
                f"{_first_line(done.stderr + done.stdout)}"
            )
        os.replace(output, binary)


def _check_runs(binary: Path) -> None:
    try:
        done = subprocess.run(
            [str(binary), "-V"], capture_output=True, text=True, timeout=_CHECK_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoadEngineError(f"the C load engine built at {binary} cannot run: {exc}") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise LoadEngineError(
            f"the C load engine built at {binary} cannot run: exit status {done.returncode}"
        )


def engine_binary() -> Path:
    """Build the C engine if needed and return its path.

    Raises LoadEngineError (one line: what is missing or the compiler's first error
    line) when the platform has no epoll (the program is written against Linux's
    ``<sys/epoll.h>``), there is no compiler, the build fails or the binary cannot run.
    """
    if not hasattr(select, "epoll"):  # Python's select module has epoll exactly on Linux
        raise LoadEngineError(
            "the C load engine needs epoll (Linux); this platform has none: "
            "use the Python engine (--engine python)"
        )
    compiler = find_compiler()
    if compiler is None:
        raise LoadEngineError(
            "the C load engine needs a C compiler (cc, gcc or clang) on PATH; "
            "install one, or use the Python engine (--engine python)"
        )
    source = resources.files(__package__).joinpath("_cload.c").read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), *map(str.encode, _CFLAGS)]))
    binary = _cache_dir() / f"cload-{key.hexdigest()[:16]}"
    if binary in _checked and binary.exists():
        return binary
    try:
        if not binary.exists():
            _compile(compiler, source, binary)
    except OSError as exc:
        raise LoadEngineError(f"cannot build the C load engine in {binary.parent}: {exc}") from None
    _check_runs(binary)
    _checked.add(binary)
    return binary


def _worker_stats(doc: Any) -> WorkerStats:
    # One process's JSON object (see print_result in _cload.c) as the Python engine's
    # WorkerStats: latencies become float seconds, errno numbers become names.
    samples = array("d", [ns / 1e9 for ns in doc["samples_ns"]])
    errors: dict[str, int] = {}
    for op, code, count in doc["errors"]:
        kind = _errno_kind(str(op), int(code)) if code else str(op)
        errors[kind] = errors.get(kind, 0) + int(count)
    return WorkerStats(
        connections=int(doc["connections"]),
        round_trips=int(doc["round_trips"]),
        window=float(doc["window"]),
        samples=samples.tobytes(),
        mask=int(doc["mask"]),
        errors=errors,
        connect_ms=None if doc["connect_ms"] is None else float(doc["connect_ms"]),
        first_echo_ms=None if doc["first_echo_ms"] is None else float(doc["first_echo_ms"]),
        cpu_seconds=float(doc["cpu_seconds"]),
    )


def _collect(proc: subprocess.Popen[bytes], deadline: float) -> Any:
    # Read one process's JSON object until it exits or the deadline passes; kill it (by
    # its pid) in the latter case. The caller's finally waits for every process anyway.
    try:
        out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise LoadEngineError(
            "the C load engine did not finish by its hard stop and was killed"
        ) from None
    if proc.returncode != 0:
        raise LoadEngineError(
            f"the C load engine failed (exit status {proc.returncode}): "
            f"{_first_line(err.decode(errors='replace'))}"
        )
    try:
        return json.loads(out)
    except ValueError as exc:
        raise LoadEngineError(f"the C load engine printed no valid result: {exc}") from None


def _stats(doc: Any) -> WorkerStats:
    try:
        return _worker_stats(doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadEngineError(f"the C load engine printed no valid result: {exc}") from None


def _spawn(binary: Path, args: list[str]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            [str(binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise LoadEngineError(f"cannot start the C load engine: {exc}") from None


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def run_c_engine(
    binary: Path,
    address: tuple[str, int],
    *,
    shares: list[int],
    size: int,
    pipeline: int,
    warmup: float,
    duration: float,
    connect_timeout: float,
    seed: int,
) -> list[WorkerStats]:
    """Run one C engine process per share of the connections at once; return their stats.

    ``address`` must already be checked to be loopback (the program checks again). Blocks
    until every process has exited; a process still running ``_EXIT_SLACK`` seconds past
    its deadlines is killed. Raises LoadEngineError when a process fails, with the first
    line of its stderr.
    """
    common = [
        *("-a", address[0], "-p", str(address[1]), "-s", str(size), "-P", str(pipeline)),
        *("-w", repr(warmup), "-d", repr(duration), "-t", repr(connect_timeout)),
        *("-S", str(seed)),
    ]
    deadline = time.monotonic() + warmup + connect_timeout + duration + _EXIT_SLACK
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for share in shares:
            procs.append(_spawn(binary, [*common, "-c", str(share)]))
        # One after the other is enough: a process writes its result only after its
        # measured window, so waiting on one never slows another's measurement.
        return [_stats(_collect(proc, deadline)) for proc in procs]
    finally:
        _reap(procs)


def run_c_paired(
    binary: Path,
    address: tuple[str, int],
    second_port: int,
    *,
    connections: int,
    size: int,
    warmup: float,
    duration: float,
    window: float,
    connect_timeout: float,
    seed: int,
) -> tuple[WorkerStats, list[tuple[int, int, float]]]:
    """Run the C engine's paired mode (see ``_cload.c``): ``connections`` to each of
    ``address`` and ``second_port`` on the same host, measured in alternating windows.

    Returns the stats of both groups together and the windows as ``(group, round trips,
    seconds)``, group 0 being ``address``. The same bounds and errors as `run_c_engine`.
    """
    args = [
        *("-a", address[0], "-p", str(address[1]), "-q", str(second_port)),
        *("-s", str(size), "-P", "1", "-c", str(connections), "-W", repr(window)),
        *("-w", repr(warmup), "-d", repr(duration), "-t", repr(connect_timeout)),
        *("-S", str(seed)),
    ]
    # The parking between windows may add a connect_timeout and a duration (_cload.c).
    slack = warmup + 2 * (connect_timeout + duration) + _EXIT_SLACK
    procs = [_spawn(binary, args)]
    try:
        doc = _collect(procs[0], time.monotonic() + slack)
    finally:
        _reap(procs)
    try:
        windows = [(int(g), int(n), float(t)) for g, n, t in doc["windows"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise LoadEngineError(f"the C load engine printed no valid windows: {exc}") from None
    return _stats(doc), windows
