"""Server subprocesses for the tools: start pinned, wait for the ready line, always stop.

Used by the benchmarks (``triosrv bench``, ``scripts/bench.py``) and the chaos suite
(``triosrv chaos suite``), which both run servers as processes of their own; it imports
neither. Every benchmark measures a server in a process of its own, pinned to one CPU (with
``taskset -c`` when it is installed, else ``sched_setaffinity`` in the child) while the
load runs on another, so that the load generator never steals the server's CPU. A
server is ready when it prints ``listening on tcp://127.0.0.1:PORT`` to stderr, the
line ``triosrv listen`` logs; the peer servers under ``scripts/peers/`` print the same
line, so one piece of code starts any of them.

`running_server` owns the process: on leaving it sends SIGTERM, waits `STOP_GRACE`
seconds and then SIGKILLs the server by its pid, whatever happened inside.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import IO, Any, TypeVar

import attrs

from ._platform import can_pin, cpu_affinity, usable_cpu_count

__all__ = [
    "BASELINE",
    "BenchError",
    "ServerProcess",
    "baseline_cmd",
    "cpu_share_during",
    "listen_has_backend",
    "machine_facts",
    "machine_lines",
    "pinned",
    "placement",
    "plan_cpus",
    "process_cpu_ns",
    "process_cpu_seconds",
    "process_cpu_times",
    "process_rss_bytes",
    "running_server",
    "triosrv_listen_cmd",
]

T = TypeVar("T")
READY = re.compile(rb"listening on tcp://127\.0\.0\.1:(\d+)")
START_TIMEOUT = 20.0  # seconds a server may take to print its ready line
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
# The directory that holds the triosrv package: a child started from a checkout that was
# never installed still imports this same triosrv.
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """A server did not start or died during a run."""


@attrs.frozen(kw_only=True)
class ServerProcess:
    """A running server subprocess, its stderr log and the port it announced."""

    name: str
    cmd: list[str]
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    port: int

    def log_tail(self, limit: int = 2000) -> str:
        """Return the end of the server's stderr, for error messages."""
        data = os.pread(self.log.fileno(), 1 << 20, 0)
        return data[-limit:].decode(errors="replace").strip()

    def check_alive(self, during: str) -> None:
        """Raise BenchError (with the server's log) if the server has exited."""
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.proc.returncode} during {during}:\n"
                f"{self.log_tail()}"
            )


def triosrv_listen_cmd(*options: str) -> list[str]:
    """The command that runs ``triosrv listen`` on a free loopback port."""
    return [
        sys.executable,
        "-m",
        "triosrv",
        "listen",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *options,
    ]


BASELINE = "trio.serve_tcp"  # what the reports call the baseline server


def baseline_cmd() -> list[str]:
    """The command that runs the baseline: a plain ``trio.serve_tcp`` echo server on a
    free loopback port (``triosrv/bench/_baseline.py``)."""
    return [sys.executable, "-m", "triosrv.bench._baseline"]


def listen_has_backend() -> bool:
    """True when ``triosrv listen`` takes ``--backend`` (older trees have one backend)."""
    done = subprocess.run(
        [*triosrv_listen_cmd()[:4], "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": str(_SOURCE_ROOT)},
    )
    return "--backend" in done.stdout


def plan_cpus() -> tuple[int, int] | None:
    """Return (server CPU, load CPU), or None when there is only one CPU to use or the
    platform cannot pin (no CPU affinity: macOS, most BSDs); then everything runs unpinned."""
    affinity = cpu_affinity()
    if affinity is None or not can_pin():
        return None
    cpus = sorted(affinity)
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def pinned(cmd: list[str], cpu: int | None) -> tuple[list[str], Callable[[], None] | None]:
    """Return the command (and a child hook) that runs ``cmd`` on ``cpu`` only."""
    if cpu is None:
        return cmd, None
    if shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *cmd], None  # taskset execs: same pid
    return cmd, lambda: os.sched_setaffinity(0, {cpu})


def _wait_ready(proc: subprocess.Popen[bytes], log: IO[bytes], name: str) -> int:
    # Poll the server's stderr log for its ready line; return the port.
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        match = READY.search(os.pread(log.fileno(), 1 << 20, 0))
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode} before it was ready")
        time.sleep(0.02)
    raise BenchError(f"{name} did not print 'listening on tcp://127.0.0.1:PORT' in time")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # SIGTERM, wait; SIGKILL by pid after STOP_GRACE seconds.
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_hooks(hooks: list[Callable[[], None]]) -> None:  # in the child, before exec
    for hook in hooks:
        hook()


@contextmanager
def running_server(
    name: str,
    cmd: list[str],
    cpu: int | None,
    *,
    env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> Iterator[ServerProcess]:
    """Start a server subprocess on ``cpu``, yield it once ready, always stop it on exit.

    ``preexec`` runs in the child between fork and exec (e.g. to lower an rlimit).
    Raises BenchError (with the end of the server's stderr) when it exits or stays
    silent for `START_TIMEOUT` seconds.
    """
    path = os.pathsep.join(filter(None, [str(_SOURCE_ROOT), os.environ.get("PYTHONPATH")]))
    full_cmd, pin_hook = pinned(cmd, cpu)
    hooks = [h for h in (pin_hook, preexec) if h is not None]
    # stderr goes to a file, not a pipe: a chatty server can never block on its log.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            full_cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, **(env or {}), "PYTHONPATH": path},
            preexec_fn=functools.partial(_run_hooks, hooks) if hooks else None,
        )
        server = ServerProcess(name=name, cmd=cmd, proc=proc, log=log, port=0)
        try:
            try:
                port = _wait_ready(proc, log, name)
            except BenchError as exc:
                raise BenchError(f"{exc}; its stderr:\n{server.log_tail()}") from None
            yield attrs.evolve(server, port=port)
        finally:
            _stop(proc)


def process_cpu_ns(pid: int) -> int | None:
    """Nanoseconds on a CPU of all threads of a process so far (schedstat); None if gone.

    Finer than /proc/PID/stat's clock ticks, so that a short idle window still shows a
    loop that polls.
    """
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return None
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except FileNotFoundError:
            continue  # a thread that ended meanwhile; its time is lost, not wrong
    return total


def cpu_share_during(
    pid: int, measure: Callable[[], T], *, fine: bool = False
) -> tuple[T, float | None]:
    """Run ``measure``; return what it returned and the CPU seconds process ``pid`` used
    meanwhile per wall second (None if the process is gone or /proc unreadable). The
    bench tools' one CPU-share measurement, the input of ``cpu_us_per_round_trip``.

    By default the reading is :func:`process_cpu_seconds`: clock ticks, but it keeps
    the time of threads that ended meanwhile (a thread-per-connection server's threads
    end with the load's connections). ``fine`` reads :func:`process_cpu_ns` instead:
    nanoseconds, for short windows in which no thread ends (an idle server)."""
    read = _cpu_ns_as_seconds if fine else process_cpu_seconds
    before, started = read(pid), time.monotonic()
    result = measure()
    after, wall = read(pid), time.monotonic() - started
    if before is None or after is None or wall <= 0:
        return result, None
    return result, (after - before) / wall


def _cpu_ns_as_seconds(pid: int) -> float | None:
    ns = process_cpu_ns(pid)
    return None if ns is None else ns / 1e9


def process_cpu_times(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of a process so far, from /proc; None if unreadable.

    User time is the process's own code (for a Python server: the interpreter); system
    time is the kernel working for it (syscalls, and on loopback the peer's TCP receive).
    Threads that ended are included.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far, from /proc; None if unreadable."""
    times = process_cpu_times(pid)
    return None if times is None else times[0] + times[1]


def process_rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (VmRSS), from /proc; None if unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_facts(
    cpus: tuple[int, int] | None, *, load_engine: str | None = None
) -> dict[str, Any]:
    """The facts a reader needs to weigh the figures (call before pinning this process).

    ``load_engine``: for a report of `run_load` figures, which engine of the load
    generator measured (``triosrv.bench._load.resolve_engine()``).
    """
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average_1m": load,
        "python": platform.python_version(),
        "trio": _version("trio"),
        "kernel": f"{platform.system()} {platform.release()}",
        "servers_on_cpu": cpus[0] if cpus else None,
        "load_on_cpu": cpus[1] if cpus else None,
        "pinned_with": _pinning_tool(),
    }
    if load_engine is not None:
        facts["load_engine"] = load_engine
    return facts


def _pinning_tool() -> str:
    # What pins the servers here; "unavailable" where the platform has no CPU affinity.
    if not can_pin():
        return "unavailable"
    return "taskset" if shutil.which("taskset") else "sched_setaffinity"


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def placement(m: dict[str, Any]) -> str:
    """Where the servers ran, for a report's first line: pinned or not (facts ``m``)."""
    if m["servers_on_cpu"] is None:
        return "not pinned (see 'pinning')"
    return "pinned; the clients on another CPU"


def machine_lines(m: dict[str, Any]) -> list[str]:
    """The machine's facts as report lines."""
    load = m.get("load_average_1m")
    lines = [
        f"machine: {m['cpu_count']} CPUs ({m['usable_cpus']} usable)"
        + (f", {m['cpu_model']}" if m.get("cpu_model") else "")
        + f", {m['kernel']}, Python {m['python']}, trio {m['trio']}"
        + (f", load average {load:.2f} at start" if load is not None else ""),
    ]
    pin = "none (one usable CPU)"
    if m["pinned_with"] == "unavailable":
        pin = "none: CPU affinity is unavailable on this platform, everything runs unpinned"
    elif m["servers_on_cpu"] is not None:
        pin = f"servers on CPU {m['servers_on_cpu']}, load generator on CPU {m['load_on_cpu']}"
    lines.append(f"pinning ({m['pinned_with']}): {pin}")
    if m.get("load_engine"):
        lines.append(f"load generator: triosrv bench load, {m['load_engine']} engine")
    return lines
