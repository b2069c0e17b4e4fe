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
import select
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from triosrv import ConfigError, _platform, _workers
from triosrv._backends import available_backends, require_backend
from triosrv.bench import _cengine, _load_worker, run_load
from triosrv.bench._backends import pinned_here
from triosrv.bench._cengine import LoadEngineError
from triosrv.bench._servers import machine_facts, machine_lines, plan_cpus
from triosrv.diagnostics import _fds, system_facts
from triosrv.lowlevel import Multiplexer, PollMultiplexer, SelectMultiplexer
from triosrv.testing import platform_env, without_proc

from .helpers import running_server
from .test_bench_load import ThreadedEchoServer

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
        " hasattr(os, 'sched_getaffinity'), hasattr(socket, 'SO_PASSCRED'), select.poll)\n"
    )
    done = run_simulated(sim_env, [sys.executable, "-c", probe])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("False False False False False <built-in function poll>")


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
        time.sleep(0.05)
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


def _order(names: tuple[str, ...]) -> list[str]:
    from triosrv._config import BACKENDS

    return [b for b in BACKENDS if b in names]


def test_help_runs_without_epoll(sim_env: dict[str, str], wrap: object) -> None:
    assert callable(wrap)
    for args in (["--help"], ["listen", "--help"], ["bench", "--help"], ["diag", "--help"]):
        done = run_simulated(sim_env, wrap(triosrv_cmd(*args)))
        assert (done.returncode, done.stderr) == (0, ""), args
        assert "Usage:" in done.stdout


# In-process: the same fallbacks, each with its one feature removed by monkeypatch.


def test_require_backend_names_what_is_missing_and_what_is_available(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(select, "epoll")
    assert available_backends() == list(_order(PORTABLE_BACKENDS))
    with pytest.raises(ConfigError) as info:
        require_backend("epoll")
    assert str(info.value) == (
        "backend: 'epoll' needs select.epoll, which this platform lacks; available "
        "backends: trio, trio-fd, poll, select, nonblocking, blocking"
    )
    for name in PORTABLE_BACKENDS:
        require_backend(name)


def test_require_backend_refuses_poll_where_select_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(select, "poll")
    assert "poll" not in available_backends()
    with pytest.raises(ConfigError, match=r"'poll' needs select\.poll"):
        require_backend("poll")


async def test_serve_refuses_a_backend_this_platform_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Inside trio.run: trio built its epoll I/O manager before the attribute went away.
    monkeypatch.delattr(select, "epoll")
    with pytest.raises(ConfigError, match=r"'epoll' needs select\.epoll"):
        async with running_server(backend="epoll"):
            pass  # pragma: no cover - the server must not start


@pytest.mark.parametrize("mux_type", [SelectMultiplexer, PollMultiplexer])
async def test_multiplexer_wakes_through_a_pipe_without_eventfd(
    monkeypatch: pytest.MonkeyPatch, mux_type: type[Multiplexer]
) -> None:
    monkeypatch.delattr(os, "eventfd")
    mux = mux_type()
    try:
        wake_r, wake_w = mux._wake_fd, mux._wake_write_fd
        assert wake_r != wake_w
        assert stat.S_ISFIFO(os.fstat(wake_r).st_mode)

        async def wake_soon() -> None:
            await trio.sleep(0.05)  # real sleep: the wait must block in its syscall
            mux.wakeup()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wake_soon)
            with trio.fail_after(5):
                assert await mux.wait() == []
        # Consumed: the next wait blocks again, until cancelled (through the pipe too).
        with trio.fail_after(5), trio.move_on_after(0.05) as scope:
            await mux.wait()
            pytest.fail("a consumed wake-up woke a second wait")
        assert scope.cancelled_caught
    finally:
        mux.close()
    for fd in (wake_r, wake_w):
        with pytest.raises(OSError):
            os.fstat(fd)  # close() closed both ends


def test_load_worker_runs_over_poll_without_epoll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(select, "epoll")
    assert isinstance(_load_worker._open_poller(), _load_worker._PollSet)
    server = ThreadedEchoServer()
    try:
        result = run_load(
            "127.0.0.1", server.port, connections=3, size=64, duration=0.3, warmup=0.1,
            pipeline=2, engine="auto",
        )  # fmt: skip
    finally:
        server.stop()
    assert result.engine == "python"  # auto: the C engine needs epoll
    assert result.round_trips > 0
    assert result.errors == 0


def test_c_load_engine_refuses_in_one_line_without_epoll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(select, "epoll")
    with pytest.raises(LoadEngineError) as info:
        _cengine.engine_binary()
    assert "\n" not in str(info.value)
    assert "needs epoll" in str(info.value) and "--engine python" in str(info.value)


def test_bench_runs_unpinned_without_cpu_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.delattr(os, "sched_setaffinity")
    assert plan_cpus() is None
    facts = machine_facts(None)
    assert facts["pinned_with"] == "unavailable"
    assert facts["usable_cpus"] == os.cpu_count()
    assert "CPU affinity is unavailable" in machine_lines(facts)[1]
    assert pinned_here(None)() is None  # nothing to pin, nothing to restore


def test_diag_system_lists_the_backends_of_this_platform(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(select, "epoll")
    facts = {fact.name: fact for fact in system_facts()}
    assert facts["backends"].value == _order(PORTABLE_BACKENDS)
    assert facts["backends"].hint == "not on this platform: epoll (needs select.epoll)"
    assert "epoll" not in str(facts["fd_setsize"].hint)


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


def test_fd_listing_trusts_only_a_directory_that_lists_a_new_fd(tmp_path: Path) -> None:
    assert _platform._listed_fds("/dev/fd") == _platform._listed_fds("/proc/self/fd")
    for name in ("0", "1", "2"):  # FreeBSD's /dev/fd without fdescfs: 0, 1 and 2 only
        (tmp_path / name).touch()
    assert _platform._listed_fds(str(tmp_path)) is None
    assert _platform._listed_fds(str(tmp_path / "missing")) is None


def test_fd_probe_finds_what_proc_lists() -> None:
    with socket.socket() as sock:
        probed = [fd for fd in range(_platform._probe_bound()) if _platform._is_open(fd)]
        assert sock.fileno() in probed
        assert probed == _platform.open_fd_numbers()


def test_own_fd_table_describes_fds_from_fstat_and_the_sockets_themselves() -> None:
    read_fd, write_fd = os.pipe()
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        server, _ = listener.accept()
        with server:
            table = {info.fd: info for info in _fds._own_fd_table()}
            host, port = listener.getsockname()
            lst = table[listener.fileno()]
            assert (lst.kind, lst.proto, lst.local, lst.remote, lst.state) == (
                "socket", "tcp", f"{host}:{port}", None, "LISTEN",
            )  # fmt: skip
            conn = table[client.fileno()]
            assert (conn.proto, conn.remote, conn.state) == ("tcp", f"{host}:{port}", "CONNECTED")
            assert table[client.fileno()].target != table[server.fileno()].target
    try:
        assert table[read_fd].kind == table[write_fd].kind == "pipe"
        assert table[read_fd].target == table[write_fd].target  # one pipe, one inode
    finally:
        os.close(read_fd)
        os.close(write_fd)


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
        time.sleep(0.05)
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


def test_worker_binds_shared_listens_here_and_passes_fds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "SO_PASSCRED")
    assert not _workers.kernel_shards()
    held, binds, fds = _workers.worker_binds(["127.0.0.1:0", "[::1]:0"], shared=True)
    try:
        assert binds == [f"fd://{sock.fileno()}" for sock in held] and fds == [
            sock.fileno() for sock in held
        ]
        for sock in held:  # listening already: a connection queues before any worker runs
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            with socket.create_connection(sock.getsockname()[:2], timeout=5):
                pass
    finally:
        for sock in held:
            sock.close()


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
