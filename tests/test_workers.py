"""`triosrv listen --workers N`: a master process and N workers sharing its sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import trio

from triosrv._workers import worker_options

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

    async def changed(self) -> None:
        """Wait for the next line."""
        await self._changed.wait()

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
            await log.wait_for("listening on")
            text = "\n".join(log.lines)
            started = {
                int(index): int(pid)
                for index, pid in re.findall(r"worker (\d) started \(pid (\d+)", text)
            }
            worker_pids.update(started.values())

            # Both workers accept from the one shared queue.
            served = Counter(await many_pids(port, 60))
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
            # The queue is the master's: only the one exchange the killed worker was
            # in the middle of can fail, never what waited in the queue.
            assert after_kill.count(None) <= 1, after_kill

            # SIGTERM drains both workers and the supervisor exits 0.
            mark = len(log.lines)
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                assert await proc.wait() == 0
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
            await log.wait_for("listening on")
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


def test_workers_options_serve_the_inherited_fds_with_a_private_control() -> None:
    options = {"bind": ("127.0.0.1:0",), "port": 0, "workers": 3, "grace": 5.0}
    options |= {"control": "/run/t.sock", "metrics": "127.0.0.1:9100", "reuse-port": True}
    assert worker_options(options, [5, 6], "/tmp/w/g1-w1.sock") == {
        "grace": 5.0,
        "bind": ["fd://5", "fd://6"],
        "control": "/tmp/w/g1-w1.sock",
    }


async def test_workers_share_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    command = [sys.executable, "-m", "triosrv", "listen", "--workers", "2"]
    command += ["--bind", f"unix:{path}", "--handler", HANDLER]
    proc = await trio.lowlevel.open_process(command, cwd=ROOT, stderr=subprocess.PIPE)
    log = Log()
    try:
        async with trio.open_nursery() as nursery:
            assert proc.stderr is not None
            nursery.start_soon(log.read, proc.stderr)
            await log.wait_for(f"listening on unix:{path}")
            pids = re.findall(r"worker \d started \(pid (\d+)", "\n".join(log.lines))
            async with await trio.open_unix_socket(path) as stream:
                with trio.fail_after(10):
                    assert (await stream.receive_some(100)).decode().strip() in pids
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                assert await proc.wait() == 0
            nursery.cancel_scope.cancel()
        assert not os.path.exists(path)  # the master removed its socket file
    finally:
        await end_supervisor(proc, [])


async def test_workers_status_shows_every_worker(tmp_path: Path) -> None:
    control = str(tmp_path / "ctl")
    command = [sys.executable, "-m", "triosrv", "listen", "--workers", "2", "--port", "0"]
    command += ["--control", control, "--handler", HANDLER]
    proc = await trio.lowlevel.open_process(command, cwd=ROOT, stderr=subprocess.PIPE)
    log = Log()
    pids: dict[str, str] = {}
    try:
        async with trio.open_nursery() as nursery:
            assert proc.stderr is not None
            nursery.start_soon(log.read, proc.stderr)
            port = int((await log.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)"))[1])
            pids.update(re.findall(r"worker (\d) started \(pid (\d+)", "\n".join(log.lines)))
            served = await many_pids(port, 20)
            status = await trio.run_process(
                [sys.executable, "-m", "triosrv", "status", "--control", control, "--json"],
                capture_stdout=True,
            )
            doc = json.loads(status.stdout)
            assert doc["pid"] == proc.pid and doc["generation"] == 1
            [generation] = doc["generations"]
            workers = {str(w["index"]): w for w in generation["workers"]}
            assert {i: str(w["pid"]) for i, w in workers.items()} == pids
            assert all(w["state"] == "ready" for w in workers.values())
            assert doc["statistics"]["accepted"] == len(served) == 20
            text = await trio.run_process(
                [sys.executable, "-m", "triosrv", "status", "--control", control],
                capture_stdout=True,
            )
            assert "generation 1 (processes, serving)" in text.stdout.decode()
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                assert await proc.wait() == 0
            nursery.cancel_scope.cancel()
    finally:
        await end_supervisor(proc, (int(pid) for pid in pids.values()))


async def test_workers_metrics_count_every_worker() -> None:
    command = [sys.executable, "-m", "triosrv", "listen", "--workers", "2", "--port", "0"]
    command += ["--metrics", "127.0.0.1:0", "--handler", HANDLER]
    proc = await trio.lowlevel.open_process(command, cwd=ROOT, stderr=subprocess.PIPE)
    log = Log()
    pids: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            assert proc.stderr is not None
            nursery.start_soon(log.read, proc.stderr)
            port = int((await log.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)"))[1])
            metrics_port = int((await log.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)"))[1])
            pids += [int(p) for p in re.findall(r"started \(pid (\d+)", "\n".join(log.lines))]
            served = Counter(await many_pids(port, 40))
            assert set(served) == set(pids), served  # both workers served some
            text = await scrape(metrics_port)
            accepted = {
                labels: float(value)
                for labels, value in re.findall(
                    r"^triosrv_connections_accepted_total\{(.*)\} (\S+)$", text, re.M
                )
            }
            assert len(accepted) == 2 and sum(accepted.values()) == 40, text
            for labels in accepted:
                assert 'generation="1"' in labels and "worker=" in labels
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                assert await proc.wait() == 0
            nursery.cancel_scope.cancel()
    finally:
        await end_supervisor(proc, pids)


async def scrape(port: int) -> str:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data.decode()


async def many_pids(port: int, count: int) -> list[int | None]:
    """``count`` connections, 4 at a time: which process served each."""
    results: list[int | None] = []

    async def client(n: int) -> None:
        for _ in range(n):
            results.append(await which_pid(port))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(client, count // 4)
    return results


BROKEN = "raise RuntimeError('broken on purpose')\n"
WORKING = "async def handler(conn):\n    await conn.send_all(b'back\\n')\n"


async def test_workers_crash_looping_worker_is_backed_off(tmp_path: Path) -> None:
    # A worker whose handler stops importing (the file was broken after the start)
    # dies at every restart: the restarts slow down (0.1, 0.2, 0.4 s, ...) instead of
    # spinning, and the queue waits for a worker that can serve.
    (tmp_path / "flaky.py").write_text(WORKING)
    command = [sys.executable, "-m", "triosrv", "listen", "--workers", "1", "--port", "0"]
    command += ["--handler", "flaky:handler"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = await trio.lowlevel.open_process(command, cwd=ROOT, stderr=subprocess.PIPE, env=env)
    log = Log()
    pids: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            assert proc.stderr is not None
            nursery.start_soon(log.read, proc.stderr)
            port = int((await log.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)"))[1])
            pids.append(int((await log.wait_for(r"worker 1 started \(pid (\d+)\)"))[1]))
            (tmp_path / "flaky.py").write_text(BROKEN)
            os.kill(pids[0], signal.SIGKILL)
            with trio.fail_after(60):
                while sum("restarting in" in line for line in log.lines) < 4:
                    await log.changed()
            text = "\n".join(log.lines)
            assert "cannot import 'flaky:handler': RuntimeError: broken on purpose" in text
            delays = [float(d) for d in re.findall(r"restarting in ([\d.]+) s", text)][:4]
            assert delays[:3] == [0.1, 0.2, 0.4], text
            # Fixed again: the next restart serves what waited in the queue.
            (tmp_path / "flaky.py").write_text(WORKING)
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                with trio.fail_after(30):
                    assert await stream.receive_some(100) == b"back\n"
            pids += [int(p) for p in re.findall(r"started \(pid (\d+)\)", "\n".join(log.lines))]
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                assert await proc.wait() == 0
            nursery.cancel_scope.cancel()
    finally:
        await end_supervisor(proc, pids)
