"""Reload (SIGHUP, `status --reload`): a new generation on the same sockets, nothing lost."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from triosrv._master import Master
from triosrv._master_status import MasterControl
from triosrv._options import effective_options, load_listen
from triosrv.bench._reload import ReloadPlan, run_reload_bench

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """A ``triosrv listen`` process and its log, line by line."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def read(self) -> None:
        assert self.proc.stderr is not None
        pending = b""
        async for chunk in self.proc.stderr:
            pending += chunk
            *done, pending = pending.split(b"\n")
            self.lines += [line.decode() for line in done]
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, pattern: str, after: int = 0) -> re.Match[str]:
        with trio.fail_after(60):  # generous: python start-ups on a loaded machine
            while True:
                for line in self.lines[after:]:
                    if match := re.search(pattern, line):
                        return match
                await self._changed.wait()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@asynccontextmanager
async def listen(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Server]:
    command = [sys.executable, "-m", "triosrv", "listen", *args]
    proc = await trio.lowlevel.open_process(
        command, cwd=ROOT, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
    )
    server = Server(proc)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.read)
            await server.wait_for("listening on")
            yield server
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                assert await proc.wait() == 0, server.text
            nursery.cancel_scope.cancel()
        # The workers the master started are gone with it.
        for pid in {int(p) for p in re.findall(r"started \(pid (\d+)\)", server.text)}:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        await proc.stderr.aclose()
    assert "Traceback" not in server.text


async def ask(port: int, data: bytes = b"?") -> bytes:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        with trio.fail_after(10):
            return await stream.receive_some(100)


async def sighup(server: Server) -> re.Match[str]:
    mark = len(server.lines)
    server.proc.send_signal(signal.SIGHUP)
    return await server.wait_for(r"reload: generation (\d+) serving|reload failed", mark)


def port_of(server: Server) -> int:
    return int(re.findall(r"listening on tcp://127\.0\.0\.1:(\d+)", server.text)[0])


@pytest.mark.parametrize("backend", ["trio", "epoll"])
@pytest.mark.parametrize("workers", [None, 2])
async def test_reload_five_sighups_under_churn_lose_nothing(
    workers: int | None, backend: str
) -> None:
    plan = ReloadPlan(
        reloads=5,
        interval=0.3,
        concurrency=4,
        streams=2,
        stream_lifetime=1.0,
        workers=workers,
        backend=backend,
        grace=20,
    )
    counts = await run_reload_bench(plan)
    assert (counts.failed, counts.reset, counts.wrong, counts.streams_cut) == (0, 0, 0, 0)
    assert not counts.sentinel_cut  # a connection from before the reloads lived through
    assert counts.reloads_ok == 5 and counts.ok == counts.attempted > 0
    generations = [tuple(pids) for pids in counts.pids]
    assert all(len(pids) == (workers or 1) for pids in generations)
    every_pid = [pid for pids in generations for pid in pids]
    assert len(set(every_pid)) == len(every_pid)  # new processes every time


HANDLER_CODE = """
import os

async def handler(conn):
    await conn.send_all(b"{version} %d\\n" % os.getpid())
"""


@pytest.mark.parametrize("workers", [None, 2])
async def test_reload_runs_edited_handler_code_in_new_processes_on_the_same_port(
    tmp_path: Path, workers: int | None
) -> None:
    module = tmp_path / "reloadme.py"
    module.write_text(HANDLER_CODE.format(version="v1"))
    control = str(tmp_path / "ctl")
    env = {"PYTHONPATH": str(tmp_path)}
    args = ["--port", "0", "--handler", "reloadme:handler", "--control", control]
    args += [] if workers is None else ["--workers", str(workers)]
    async with listen(*args, env=env) as server:
        port = port_of(server)
        version, first = (await ask(port)).split()
        assert version == b"v1"
        if workers is None:  # generation 1 is served by the process started
            assert int(first) == server.proc.pid
        old_pids = set(re.findall(r"started \(pid (\d+)\)", server.text))
        # Same length, likely the same second: the bytecode cache must not be used.
        module.write_text(HANDLER_CODE.format(version="v2"))
        assert (await sighup(server))[1] == "2"
        version, pid = (await ask(port)).split()
        assert version == b"v2" and int(pid) != server.proc.pid
        assert pid.decode() not in old_pids and pid != first
        # The control socket does the same, and says when it is done.
        module.write_text(HANDLER_CODE.format(version="v3"))
        result = await trio.run_process(
            [sys.executable, "-m", "triosrv", "status", "--control", control, "--reload"],
            capture_stdout=True,
        )
        assert result.stdout.decode().strip() == "reloaded: generation 3 serving"
        version, pid3 = (await ask(port)).split()
        assert version == b"v3" and pid3 != pid
        assert port_of(server) == port
        assert server.text.count("listening on") == 1  # the sockets were not bound again


async def test_reload_bad_config_keeps_the_old_generation(tmp_path: Path) -> None:
    config = tmp_path / "triosrv.toml"
    config.write_text("idle-timeout = 30\n")
    control = str(tmp_path / "ctl")
    async with listen("--config", str(config), "--port", "0", "--control", control) as server:
        port = port_of(server)
        async with await trio.open_tcp_stream("127.0.0.1", port) as before:
            await before.send_all(b"a")
            assert await before.receive_some(10) == b"a"
            config.write_text("idle-timeout = -5\n")
            failed = await sighup(server)
            assert failed[0] == "reload failed"
            line = next(line for line in server.lines if "reload failed" in line)
            assert line.endswith(
                f"reload failed, generation 1 keeps serving: {config}: idle-timeout: "
                "expected a positive number of seconds or 'none', got -5"
            )
            assert await ask(port, b"still") == b"still"
            await before.send_all(b"b")
            assert await before.receive_some(10) == b"b"
        result = await trio.run_process(
            [sys.executable, "-m", "triosrv", "status", "--control", control, "--json"],
            capture_stdout=True,
        )
        doc = json.loads(result.stdout)
        assert doc["generation"] == 1
        [attempt] = doc["reloads"]
        assert not attempt["ok"] and "idle-timeout" in attempt["reason"]
        result = await trio.run_process(
            [sys.executable, "-m", "triosrv", "status", "--control", control, "--reload"],
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 1
        assert result.stderr.decode().startswith("error: server: reload failed: ")


async def test_reload_handler_that_fails_to_import_keeps_the_old_generation(
    tmp_path: Path,
) -> None:
    module = tmp_path / "breakme.py"
    module.write_text(HANDLER_CODE.format(version="ok"))
    env = {"PYTHONPATH": str(tmp_path)}
    async with listen("--port", "0", "--handler", "breakme:handler", env=env) as server:
        port = port_of(server)
        module.write_text("raise RuntimeError('broken on purpose')\n")
        assert (await sighup(server))[0] == "reload failed"
        line = next(line for line in server.lines if "reload failed" in line)
        assert "breakme" in line and "broken on purpose" in line, line
        assert (await ask(port)).startswith(b"ok ")
        module.write_text(HANDLER_CODE.format(version="ok2"))
        assert (await sighup(server))[1] == "3"  # generation 2 was the failed one
        assert (await ask(port)).startswith(b"ok2 ")


async def test_reload_notifies_systemd_reloading_then_ready(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        receiver.setblocking(False)
        async with listen("--port", "0", env={"NOTIFY_SOCKET": path}) as server:

            async def receive() -> dict[str, str]:
                with trio.fail_after(30):
                    await trio.lowlevel.wait_readable(receiver)
                return dict(
                    line.split("=", 1) for line in receiver.recv(4096).decode().splitlines()
                )

            assert await receive() == {"READY": "1"}
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            await sighup(server)
            reloading = await receive()
            assert reloading["RELOADING"] == "1"
            assert int(reloading["MONOTONIC_USEC"]) >= before
            assert (await receive())["READY"] == "1"


BENCH = [sys.executable, "-m", "triosrv", "bench", "reload"]
LIFE = ["--stream-lifetime", "0.5"]


def test_reload_bench_command_prints_the_counts() -> None:
    result = subprocess.run(
        [
            *BENCH,
            "--reloads",
            "2",
            "--interval",
            "0.1",
            "--concurrency",
            "2",
            "--streams",
            "1",
            "--stream-lifetime",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.search(r"failed 0, reset 0, wrong 0$", lines[1])
    assert lines[2].endswith("cut 0, sentinel intact")
    assert lines[3].startswith("reloads ok 2, failed 0; time per reload median ")


def test_reload_bench_refuses_streams_that_outlive_grace() -> None:
    result = subprocess.run(
        [*BENCH, "--grace", "1", "--stream-lifetime", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "--stream-lifetime" in result.stderr


# -- the master's control endpoint, fuzzed ---------------------------------------------

_REQUESTS = st.one_of(
    st.binary(max_size=60),
    st.dictionaries(
        st.sampled_from(["cmd", "grace", "offset", "limit", "x"]),
        st.one_of(
            st.sampled_from(["status", "statistics", "drain", "reload", "nope"]),
            st.none(),
            st.booleans(),
            st.integers(-(10**20), 10**20),
            st.floats(),
            st.text(max_size=5),
        ),
        max_size=4,
    ).map(lambda doc: json.dumps(doc).encode()),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_REQUESTS, min_size=1, max_size=4))
def test_reload_master_control_answers_anything_with_one_json_line(lines: list[bytes]) -> None:
    options = effective_options({"port": 0})
    config, handler = load_listen(options)
    master = Master({"port": 0}, None, options, config, handler)

    async def main() -> None:
        endpoint = MasterControl(master)
        for line in lines:
            encoded, after = await endpoint.answer(line)
            assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
            doc = json.loads(encoded)
            assert isinstance(doc, dict) and ("error" in doc or "ok" in doc or "pid" in doc)
            assert after is None or callable(after)  # a drain, not started here

    trio.run(main)


async def test_reload_asked_during_a_reload_waits_for_its_outcome(tmp_path: Path) -> None:
    control = str(tmp_path / "ctl")
    async with listen("--port", "0", "--control", control) as server:
        status = [sys.executable, "-m", "triosrv", "status", "--control", control, "--reload"]
        outputs: list[str] = []

        async def ask_reload() -> None:
            result = await trio.run_process(status, capture_stdout=True)
            outputs.append(result.stdout.decode().strip())

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(ask_reload)
        numbers = [int(re.findall(r"generation (\d+) serving", out)[0]) for out in outputs]
        # Each answer names a generation that was serving when it came; the last one
        # started after the last request arrived, so it is the highest.
        serving = int(re.findall(r"reload: generation (\d+) serving", server.text)[-1])
        assert max(numbers) == serving and all(n >= 2 for n in numbers)
        assert await ask(port_of(server), b"x") == b"x"
