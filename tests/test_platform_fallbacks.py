"""The platform fallbacks in-process: each with its one feature removed by monkeypatch.

`tests/test_platforms.py` runs the same code paths in subprocesses under the whole
simulated platform (:func:`triosrv.testing.platform_env`).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from triosrv import BindError, ConfigError, _platform, _workers, parse_bind
from triosrv._backends import available_backends, require_backend
from triosrv._listeners import open_listeners
from triosrv._server_processes import machine_facts, machine_lines, plan_cpus
from triosrv._systemd import parse_notification
from triosrv.bench import _cengine, _load_worker, run_load
from triosrv.bench._backends import pinned_here
from triosrv.bench._cengine import LoadEngineError
from triosrv.diagnostics import _fds, system_facts
from triosrv.lowlevel import Multiplexer, PollMultiplexer, SelectMultiplexer
from triosrv.testing import wait_for

from .helpers import running_server, tcp_port
from .test_bench_load import ThreadedEchoServer
from .test_platforms import PORTABLE_BACKENDS, _order


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


@pytest.mark.parametrize("backend", ["trio-fd", "select"])
async def test_serve_without_tcp_notsent_lowat(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.delattr(socket, "TCP_NOTSENT_LOWAT")  # FreeBSD has none
    async with running_server(backend=backend) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", tcp_port(server))
        async with stream:
            await stream.send_all(b"no lowat")
            with trio.fail_after(5):
                assert await stream.receive_some(100) == b"no lowat"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_parse_notification_takes_any_datagram(data: bytes) -> None:
    fields = parse_notification(data)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())


async def test_generation_per_worker_notify_socket_ignores_garbage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each worker has a notify socket of its own (a path in the master's private
    # directory), so no SO_PASSCRED is needed; only an exact READY=1 there marks
    # that worker ready.
    monkeypatch.delattr(socket, "SO_PASSCRED")
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    generation = _workers.ProcessGeneration(1, {}, fds=[], workers=2, grace=0, rundir=str(rundir))
    slot = generation._slots[0]
    slot.pid = os.getpid()  # as if started
    with contextlib.ExitStack() as stack:
        generation._open_receivers(stack)
        address = str(rundir / "g1-w1.notify")
        assert stat.S_ISSOCK(os.stat(address).st_mode)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(generation._read_notifications, slot)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                for junk in (b"", b"\xff\xfe", b"READY=0", b"READY", b"STATUS=1\nREADY=2"):
                    sender.sendto(junk, address)
                await trio.testing.wait_all_tasks_blocked()
                assert slot.state == "starting"
                sender.sendto(b"STATUS=up\nREADY=1", address)
                await wait_for(lambda: slot.state == "ready")
            assert slot.message == "up"
            assert generation._slots[1].state == "starting"  # not its socket
            assert not generation._all_ready.is_set()
            nursery.cancel_scope.cancel()
    assert not os.path.exists(address)  # removed with the generation


def test_reuse_port_without_so_reuseport_is_one_bind_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    with pytest.raises(BindError) as info:
        open_listeners([parse_bind("127.0.0.1:0")], reuse_port=True)
    assert info.value.strerror == (
        "cannot bind 127.0.0.1:0: --reuse-port needs SO_REUSEPORT, which this platform lacks"
    )
    for listener in open_listeners([parse_bind("127.0.0.1:0")]):  # without it: fine
        listener.close()
