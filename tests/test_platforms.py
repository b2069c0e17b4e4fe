"""triosrv where Linux's extras are missing (macOS, the BSDs), simulated on Linux.

The subprocess tests run ``python -m triosrv`` under :func:`triosrv.testing.platform_env`
(no epoll, eventfd, CPU affinity, SO_PASSCRED; trio itself keeps its I/O manager), and
where this machine allows it also with an empty ``/proc`` (:func:`without_proc`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from triosrv.testing import platform_env, without_proc
from triosrv.testing._platform import HIDDEN

# Every backend that must run without epoll; poll too, since macOS and the BSDs have it.
PORTABLE_BACKENDS = ("trio", "trio-fd", "select", "poll", "nonblocking", "blocking")
READY = re.compile(rb"listening on tcp://(127\.0\.0\.1):([0-9]+)")
START_TIMEOUT = 30.0  # seconds; generous, the machine is shared


@pytest.fixture(scope="module")
def sim_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return platform_env(tmp_path_factory.mktemp("platform"))


@pytest.fixture(params=["no-epoll", "no-epoll-no-proc"])
def wrap(request: pytest.FixtureRequest) -> Iterator[object]:
    """How a command is run: as is, or with an empty /proc (skipped where impossible)."""
    if request.param == "no-epoll":
        yield lambda cmd: cmd
        return
    if without_proc(["true"]) is None:
        pytest.skip("hiding /proc needs unshare(1) and root")
    yield without_proc


def triosrv_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "triosrv", *args]


def run_simulated(
    env: dict[str, str], cmd: list[str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_platform_env_hides_the_linux_features_but_trio_runs(sim_env: dict[str, str]) -> None:
    probe = (
        "import os, select, socket, trio\n"
        "trio.run(trio.sleep, 0)\n"
        "print(hasattr(select, 'epoll'), hasattr(select, 'EPOLLIN'), hasattr(os, 'eventfd'),"
        " hasattr(select, 'POLLRDHUP'),"
        " hasattr(os, 'sched_getaffinity'), hasattr(socket, 'SO_PASSCRED'), select.poll)\n"
    )
    done = run_simulated(sim_env, [sys.executable, "-c", probe])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("False False False False False False <built-in function poll>")


def test_platform_without_proc_sees_an_empty_proc() -> None:
    cmd = without_proc([sys.executable, "-c", "import os; print(os.listdir('/proc'))"])
    if cmd is None:
        pytest.skip("hiding /proc needs unshare(1) and root")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
    assert os.path.isdir("/proc/self")  # the host's /proc is untouched


def test_import_every_package_without_epoll(sim_env: dict[str, str]) -> None:
    modules = "triosrv triosrv._cli triosrv.bench triosrv.chaos triosrv.diagnostics " + (
        "triosrv.lowlevel triosrv.protocols triosrv.testing"
    )
    done = run_simulated(sim_env, [sys.executable, "-c", f"import {', '.join(modules.split())}"])
    assert (done.returncode, done.stderr) == (0, "")


def _wait_ready(proc: subprocess.Popen[bytes], log: int) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        match = READY.search(os.pread(log, 1 << 16, 0))
        if match:
            return int(match.group(2))
        if proc.poll() is not None:
            break
        time.sleep(0.05)  # real sleep: polling a subprocess's log file for its ready line
    raise AssertionError(f"no ready line; log:\n{os.pread(log, 1 << 16, 0).decode()}")


def _echo(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(len(payload) - len(got))
            if not chunk:
                break
            got += chunk
        return got


class Served:
    """What a ``triosrv listen`` run by :func:`listening` left: exit code and log."""

    code: int | None = None
    log: str = ""


@contextlib.contextmanager
def listening(env: dict[str, str], cmd: list[str]) -> Iterator[tuple[int, Served]]:
    """Start ``cmd`` (a ``triosrv listen``); yield its port; SIGTERM it by pid on exit."""
    served = Served()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield _wait_ready(proc, log.fileno()), served
            proc.send_signal(signal.SIGTERM)
            served.code = proc.wait(timeout=START_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            served.log = os.pread(log.fileno(), 1 << 20, 0).decode()


def serve_echo_and_stop(env: dict[str, str], cmd: list[str]) -> tuple[bytes, int | None, str]:
    """Start ``cmd`` (a ``triosrv listen``), echo once, stop it: (reply, exit, log)."""
    with listening(env, cmd) as (port, served):
        reply = _echo(port, b"portable bytes\n" * 100)
    return reply, served.code, served.log


@pytest.mark.parametrize("backend", PORTABLE_BACKENDS)
def test_listen_serves_echo_without_epoll(
    sim_env: dict[str, str], wrap: object, backend: str
) -> None:
    assert callable(wrap)
    cmd = wrap(triosrv_cmd("listen", "--port", "0", "--backend", backend))
    reply, code, log = serve_echo_and_stop(sim_env, cmd)
    assert reply == b"portable bytes\n" * 100
    assert code == 0, log
    assert "Traceback" not in log
    assert "stopped: 1 connection(s) served" in log, log


def test_listen_epoll_is_refused_in_one_line(sim_env: dict[str, str], wrap: object) -> None:
    assert callable(wrap)
    done = run_simulated(sim_env, wrap(triosrv_cmd("listen", "--port", "0", "--backend", "epoll")))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "select.epoll" in lines[0]
    available = lines[0].split("available backends: ", 1)[1]
    assert available.split(", ") == _order(PORTABLE_BACKENDS)


def test_bench_backends_epoll_is_refused_in_one_line(sim_env: dict[str, str]) -> None:
    done = run_simulated(sim_env, triosrv_cmd("bench", "backends", "--backend", "epoll"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: backend: 'epoll' needs select.epoll")
    assert done.stderr.count("\n") == 1 and done.stdout == ""


def _order(names: tuple[str, ...]) -> list[str]:
    from triosrv._config import BACKENDS

    return [b for b in BACKENDS if b in names]


def test_help_runs_without_epoll(sim_env: dict[str, str], wrap: object) -> None:
    assert callable(wrap)
    for args in (["--help"], ["listen", "--help"], ["bench", "--help"], ["diag", "--help"]):
        done = run_simulated(sim_env, wrap(triosrv_cmd(*args)))
        assert (done.returncode, done.stderr) == (0, ""), args
        assert "Usage:" in done.stdout


def test_diag_system_runs_without_epoll(sim_env: dict[str, str], wrap: object) -> None:
    assert callable(wrap)
    done = run_simulated(sim_env, wrap(triosrv_cmd("diag", "system", "--json")))
    assert (done.returncode, done.stderr) == (0, "")
    facts = {fact["name"]: fact for fact in json.loads(done.stdout)["facts"]}
    assert facts["backends"]["value"] == _order(PORTABLE_BACKENDS)
    assert "epoll" not in facts["multiplexers"]["value"]
    assert facts["usable_cpus"]["value"] is None
    assert "unpinned" in facts["usable_cpus"]["hint"]
    table = run_simulated(sim_env, wrap(triosrv_cmd("diag", "system")))
    assert (table.returncode, table.stderr) == (0, "")
    assert "trio trio-fd poll select nonblocking blocking" in table.stdout


# Without /proc: this process's fds, the leak checks, diag fds and diag system.


@pytest.fixture
def no_proc() -> object:
    if without_proc(["true"]) is None:
        pytest.skip("hiding /proc needs unshare(1) and root")
    return without_proc


LEAK_PROBE = """
import socket, threading
from triosrv.testing import LeakError, check_no_leaks, open_fds
assert open_fds(), "no fds seen"
with check_no_leaks():
    socket.socket().close()
try:
    with check_no_leaks(thread_grace=0.1):
        kept = socket.socket()
except LeakError as exc:
    print(str(exc))
"""


def test_leak_checks_find_a_leaked_fd_without_proc(
    sim_env: dict[str, str], no_proc: object
) -> None:
    assert callable(no_proc)
    done = run_simulated(sim_env, no_proc([sys.executable, "-c", LEAK_PROBE]))
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"leaked fd: fd \d+ -> socket:\[\d+\] \(AF_INET \('0\.0\.0\.0', 0\)\)\n", done.stdout
    )


def test_diag_fds_lists_its_own_fds_without_proc(sim_env: dict[str, str], no_proc: object) -> None:
    assert callable(no_proc)
    done = run_simulated(sim_env, no_proc(triosrv_cmd("diag", "fds", "--json")))
    assert (done.returncode, done.stderr) == (0, "")
    doc = json.loads(done.stdout)
    assert [info["fd"] for info in doc["fds"]][:3] == [0, 1, 2]
    assert doc["fds"][1]["kind"] == "pipe"  # subprocess.run's capture


def test_diag_fds_of_another_process_is_unavailable_without_proc(
    sim_env: dict[str, str], no_proc: object
) -> None:
    assert callable(no_proc)
    done = run_simulated(sim_env, no_proc(triosrv_cmd("diag", "fds", "--pid", str(os.getpid()))))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "needs /proc" in done.stderr
    assert "Traceback" not in done.stderr
    gone = run_simulated(sim_env, no_proc(triosrv_cmd("diag", "fds", "--pid", "999999999")))
    assert (gone.returncode, gone.stderr) == (1, "error: no process with pid 999999999\n")


def test_diag_system_without_proc_marks_what_it_cannot_read(
    sim_env: dict[str, str], no_proc: object
) -> None:
    assert callable(no_proc)
    done = run_simulated(sim_env, no_proc(triosrv_cmd("diag", "system", "--json")))
    assert (done.returncode, done.stderr) == (0, "")
    facts = {fact["name"]: fact for fact in json.loads(done.stdout)["facts"]}
    for name in ("somaxconn", "ephemeral_ports"):
        assert facts[name]["value"] is None
        assert "not readable" in facts[name]["hint"]
    for name in ("fd0_stdin", "fd1_stdout", "fd2_stderr"):  # open, seen through fstat
        assert facts[name]["value"].startswith(("pipe:[", "device:[")), facts[name]
        assert facts[name]["hint"] is None


def test_bench_runs_unpinned_and_on_the_python_engine_without_epoll(
    sim_env: dict[str, str], wrap: object
) -> None:
    assert callable(wrap)
    with listening(sim_env, wrap(triosrv_cmd("listen", "--port", "0"))) as (port, served):
        load = run_simulated(
            sim_env,
            wrap(triosrv_cmd("bench", "load", "--target", f"127.0.0.1:{port}", "--json",
                             "--connections", "2", "--duration", "0.3", "--warmup", "0.1")),
        )  # fmt: skip
    assert (load.returncode, load.stderr) == (0, ""), load.stderr
    result = json.loads(load.stdout)
    assert result["engine"] == "python"  # auto: the C engine needs epoll
    assert result["round_trips"] > 0 and result["errors"] == 0
    assert served.code == 0 and "Traceback" not in served.log
    tvt = run_simulated(
        sim_env, wrap(triosrv_cmd("bench", "threads-vs-tasks", "--connections", "5"))
    )
    assert (tvt.returncode, tvt.stderr) == (0, "")
    assert "not pinned" in tvt.stdout.splitlines()[0]
    assert "CPU affinity is unavailable on this platform" in tvt.stdout
    c_engine = run_simulated(
        sim_env, wrap(triosrv_cmd("bench", "load", "--target", "127.0.0.1:9", "--engine", "c"))
    )
    assert c_engine.returncode == 1
    assert c_engine.stderr.startswith("error: the C load engine needs epoll")
    assert c_engine.stderr.count("\n") == 1


# --workers where SO_REUSEPORT does not balance and there is no SO_PASSCRED.


def _wait_log(log: int, pattern: str, after: int = 0) -> re.Match[str]:
    deadline = time.monotonic() + 60  # generous: python start-ups on a loaded machine
    while time.monotonic() < deadline:
        match = re.compile(pattern).search(os.pread(log, 1 << 20, 0).decode()[after:])
        if match:
            return match
        time.sleep(0.05)  # real sleep: polling a subprocess's log file for a line
    raise AssertionError(f"no {pattern!r} in the log:\n{os.pread(log, 1 << 20, 0).decode()}")


def _served_by(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(100)
            assert chunk, "closed without an answer"
            data += chunk
    return int(data)


def test_workers_share_the_supervisors_sockets_without_so_passcred(
    sim_env: dict[str, str],
) -> None:
    cmd = triosrv_cmd("listen", "--workers", "2", "--port", "0", "--grace", "5")
    cmd += ["--handler", "tests._pid_handler:pid_handler"]
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryFile() as log_file:
        log = log_file.fileno()
        proc = subprocess.Popen(cmd, env=sim_env, cwd=root, stderr=log_file)
        pids: set[int] = set()
        try:
            line = _wait_log(log, r"2 workers on tcp://127\.0\.0\.1:(\d+) \(sharing")
            port = int(line[1])
            _wait_log(log, "all 2 workers ready")
            started = {int(p) for p in re.findall(r"started \(pid (\d+)", _log_text(log))}
            pids |= started
            served = {_served_by(port) for _ in range(20)}
            assert served <= started, (served, started)
            # One worker dies: the other takes the shared queue, no connection fails.
            victim = served.pop()
            mark = len(_log_text(log))
            os.kill(victim, signal.SIGKILL)
            after = [_served_by(port) for _ in range(20)]
            assert victim not in after[1:]  # (the first may have been queued before)
            restarted = int(_wait_log(log, r"worker \d started \(pid (\d+)\)", after=mark)[1])
            pids.add(restarted)
            _wait_log(log, rf"ready \(pid {restarted}\)", after=mark)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        text = _log_text(log)
    assert "Traceback" not in text
    assert "supervisor: all workers stopped, exit status 0" in text


def _log_text(log: int) -> str:
    return os.pread(log, 1 << 20, 0).decode()


def test_systemd_notify_works_without_sock_cloexec(sim_env: dict[str, str], tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        receiver.settimeout(START_TIMEOUT)
        env = {**sim_env, "NOTIFY_SOCKET": path}
        with listening(env, triosrv_cmd("listen", "--port", "0")) as (_port, served):
            assert receiver.recv(100) == b"READY=1"
    assert served.code == 0 and "Traceback" not in served.log
    assert receiver.fileno() == -1


def test_platforms_doc_example_runs_as_shown() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "howto" / "platforms.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    done = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    code, message = done.stdout.split("\n", 1)
    assert code == "2"
    assert message.startswith("error: backend: 'epoll' needs select.epoll, ")
    assert "error: backend: 'epoll' needs select.epoll, ..." in doc
    (table_line,) = [
        line for line in doc.splitlines() if line.startswith("error: backend: 'epoll'")
    ]
    assert table_line == message.strip()


def test_without_poll_the_poll_backend_is_refused_and_the_rest_serve(tmp_path: Path) -> None:
    hide = {**HIDDEN, "select": (*HIDDEN["select"], "poll", "POLL")}  # no poll() at all
    env = platform_env(tmp_path, hide=hide)
    refused = run_simulated(env, triosrv_cmd("listen", "--port", "0", "--backend", "poll"))
    assert refused.returncode == 2
    assert refused.stderr == (
        "error: backend: 'poll' needs select.poll, which this platform lacks; available "
        "backends: trio, trio-fd, select, nonblocking, blocking\n"
    )
    for backend in ("trio", "select"):
        reply, code, log = serve_echo_and_stop(
            env, triosrv_cmd("listen", "--port", "0", "--backend", backend)
        )
        assert (reply, code) == (b"portable bytes\n" * 100, 0), log
        assert "Traceback" not in log


def test_platform_env_refuses_a_module_it_cannot_hide_from(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only select, socket and os"):
        platform_env(tmp_path, hide={"ssl": ("OP_",)})
