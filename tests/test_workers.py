"""`triosrv listen --workers N`: a supervisor process and N SO_REUSEPORT workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
import trio

import triosrv
from triosrv._cli import _given_options, _worker_args, listen
from triosrv._listeners import open_listeners, reserve_tcp_ports
from triosrv._options import effective_options
from triosrv._workers import worker_binds

ROOT = Path(__file__).resolve().parent.parent
HANDLER = "tests._pid_handler:pid_handler"  # answers with the pid that served


class Log:
    """The supervisor's and workers' stderr (they share it), line by line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def read(self, stream: trio.abc.ReceiveStream) -> None:
        pending = b""
        async for chunk in stream:
            pending += chunk
            *done, pending = pending.split(b"\n")
            self.lines += [line.decode() for line in done]
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, pattern: str, *, after: int = 0) -> re.Match[str]:
        """The first line from index ``after`` on that matches ``pattern``."""
        with trio.fail_after(60):  # generous: python start-ups on a loaded machine
            while True:
                for line in self.lines[after:]:
                    match = re.search(pattern, line)
                    if match:
                        return match
                await self._changed.wait()


async def which_pid(port: int) -> int | None:
    """Connect once; the pid of the worker that answered, or None if it failed."""
    try:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = await stream.receive_some(100)
                    if not chunk:
                        return None
                    data += chunk
    except (OSError, trio.BrokenResourceError):  # refused, or reset by a dying worker
        return None
    return int(data)


async def end_supervisor(proc: trio.Process, worker_pids: Iterable[int]) -> None:
    """Never leave the supervisor or a worker behind (normally all long gone), by pid."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    for pid in worker_pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.stderr is not None
    await proc.stderr.aclose()


async def test_workers_spread_survive_kill_9_and_drain_on_sigterm() -> None:
    command = [sys.executable, "-m", "triosrv", "listen", "--workers", "2", "--port", "0"]
    command += ["--handler", HANDLER, "--grace", "5"]
    proc = await trio.lowlevel.open_process(command, cwd=ROOT, stderr=subprocess.PIPE)
    log = Log()
    worker_pids: set[int] = set()
    try:
        async with trio.open_nursery() as nursery:
            assert proc.stderr is not None
            nursery.start_soon(log.read, proc.stderr)
            port = int((await log.wait_for(r"2 workers on tcp://127\.0\.0\.1:(\d+)"))[1])
            await log.wait_for("all 2 workers ready")
            text = "\n".join(log.lines)
            started = {
                int(index): int(pid)
                for index, pid in re.findall(r"worker (\d) started \(pid (\d+)", text)
            }
            worker_pids.update(started.values())

            # Both workers receive connections: the kernel spreads them by port hash.
            served = Counter([await which_pid(port) for _ in range(60)])
            assert set(served) == set(started.values()), served

            # kill -9 one worker while a client keeps connecting.
            victim = started[1]
            results: list[tuple[float, int | None]] = []
            stop_load = trio.Event()

            async def load() -> None:
                for _ in range(5000):  # bounded in count; stopped by the test well before
                    if stop_load.is_set():
                        return
                    results.append((trio.current_time(), await which_pid(port)))

            nursery.start_soon(load)
            mark = len(log.lines)
            os.kill(victim, signal.SIGKILL)
            killed_at = trio.current_time()
            await log.wait_for(rf"worker 1 \(pid {victim}\) was killed by SIGKILL", after=mark)
            new_pid = int((await log.wait_for(r"worker 1 started \(pid (\d+)\)", after=mark))[1])
            worker_pids.add(new_pid)
            await log.wait_for(rf"worker 1 ready \(pid {new_pid}\)", after=mark)
            with trio.fail_after(60):  # the new worker gets its share of the port
                while new_pid not in [pid for _, pid in results[-50:]]:
                    await trio.sleep(0.01)
            stop_load.set()

            after_kill = [pid for at, pid in results if at > killed_at]
            survivor = started[2]
            # The port kept serving throughout: the survivor answered after the kill.
            assert survivor in after_kill
            assert victim not in [pid for at, pid in results if at > killed_at + 1]
            # (A few connections queued on the killed worker's socket may fail.)
            assert after_kill.count(None) < len(after_kill) / 2

            # SIGTERM drains both workers and the supervisor exits 0.
            mark = len(log.lines)
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                assert await proc.wait() == 0
            await log.wait_for("exit status 0", after=mark)
            nursery.cancel_scope.cancel()
        tail = "\n".join(log.lines[mark:])
        assert tail.count("SIGTERM: shutting down") == 2  # each worker drained
        assert f"worker 2 (pid {survivor}) exited with status 0" in tail
        assert f"worker 1 (pid {new_pid}) exited with status 0" in tail
    finally:
        await end_supervisor(proc, worker_pids)


async def test_workers_drain_and_exit_when_the_supervisor_is_killed() -> None:
    # kill -9 leaves the supervisor no chance to stop its workers: they must notice.
    command = [sys.executable, "-m", "triosrv", "listen", "--workers", "2", "--port", "0"]
    command += ["--handler", HANDLER]
    proc = await trio.lowlevel.open_process(command, cwd=ROOT, stderr=subprocess.PIPE)
    log = Log()
    worker_pids: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            assert proc.stderr is not None
            all_closed = trio.Event()

            async def read_until_every_writer_is_gone() -> None:
                assert proc.stderr is not None
                await log.read(proc.stderr)  # the workers share the supervisor's stderr
                all_closed.set()

            nursery.start_soon(read_until_every_writer_is_gone)
            port = int((await log.wait_for(r"2 workers on tcp://127\.0\.0\.1:(\d+)"))[1])
            await log.wait_for("all 2 workers ready")
            text = "\n".join(log.lines)
            worker_pids += [int(pid) for pid in re.findall(r"worker \d started \(pid (\d+)", text)]
            assert await which_pid(port) in worker_pids
            mark = len(log.lines)
            proc.kill()
            await proc.wait()
            with trio.fail_after(20):  # each worker checks every 0.5 s, then drains
                await all_closed.wait()
        tail = "\n".join(log.lines[mark:])
        gone = f"the supervisor (pid {proc.pid}) is gone: shutting down"
        assert tail.count(gone) == 2, tail
        assert tail.count("stopped: ") == 2, tail
        assert await which_pid(port) is None  # nobody serves the port any more
    finally:
        await end_supervisor(proc, worker_pids)


async def test_workers_failing_worker_stops_supervisor_with_one_line() -> None:
    command = [sys.executable, "-m", "triosrv", "listen", "--workers", "2", "--port", "0"]
    command += ["--handler", "tests._no_such_module:handler"]
    result = await trio.run_process(command, cwd=ROOT, capture_stderr=True, check=False)
    # A bad handler is caught before any worker starts (a usage error).
    assert result.returncode == 2
    assert b"cannot import" in result.stderr


def test_workers_refuse_unix_binds() -> None:
    with pytest.raises(triosrv.ConfigError, match="cannot be shared by workers"):
        worker_binds(["unix:/tmp/x.sock"])


def test_workers_port_zero_is_reserved_once_for_every_address() -> None:
    held, resolved = reserve_tcp_ports([triosrv.parse_bind("127.0.0.1:0")])
    listeners = []
    try:
        [spec] = resolved
        assert spec.port == held[0].getsockname()[1] != 0
        # The workers' own SO_REUSEPORT listeners bind the reserved port.
        listeners += open_listeners(resolved, reuse_port=True)
        listeners += open_listeners(resolved, reuse_port=True)
        for listener in listeners:
            assert listener.address == f"tcp://127.0.0.1:{spec.port}"
        # A socket without SO_REUSEPORT cannot take it meanwhile.
        with pytest.raises(triosrv.BindError, match="address already in use"):
            open_listeners(resolved)
    finally:
        for listener in listeners:
            listener.close()
        for sock in held:
            sock.close()


def test_workers_repeat_the_given_options_but_not_the_binds() -> None:
    argv = ["--workers", "3", "--port", "0", "--idle-timeout", "none", "--grace", "5"]
    argv += ["--proxy-protocol", "v2", "--reuse-port", "--control", "/run/t.sock"]
    with listen.make_context("listen", argv) as ctx:
        options = effective_options(_given_options(ctx))
    args = _worker_args(options)
    assert args == ["--idle-timeout", "none", "--grace", "5.0", "--proxy-protocol", "v2"]


async def test_workers_each_have_their_own_control_socket(tmp_path: Path) -> None:
    control = str(tmp_path / "ctl")
    command = [sys.executable, "-m", "triosrv", "listen", "--workers", "2", "--port", "0"]
    command += ["--control", control]
    proc = await trio.lowlevel.open_process(command, cwd=ROOT, stderr=subprocess.PIPE)
    log = Log()
    pids: dict[str, str] = {}
    try:
        async with trio.open_nursery() as nursery:
            assert proc.stderr is not None
            nursery.start_soon(log.read, proc.stderr)
            await log.wait_for("all 2 workers ready")
            text = "\n".join(log.lines)
            pids.update(re.findall(r"worker (\d) started \(pid (\d+)", text))
            for index in ("1", "2"):
                status = await trio.run_process(
                    [sys.executable, "-m", "triosrv", "status", "--control", f"{control}.{index}"],
                    capture_stdout=True,
                )
                assert f"triosrv pid {pids[index]}: serving" in status.stdout.decode()
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                assert await proc.wait() == 0
            nursery.cancel_scope.cancel()
    finally:
        await end_supervisor(proc, (int(pid) for pid in pids.values()))
