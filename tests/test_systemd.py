"""Socket activation and sd_notify: fd:// binds, LISTEN_FDS, and a test playing systemd."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import triosrv
from triosrv._systemd import InheritedSocket, listen_fds, notify, parse_notification

from .helpers import running_server

# -- listen_fds / notify, with the environment passed in --------------------------------


def test_systemd_listen_fds_reads_count_pid_and_names() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "web:admin"}
    assert listen_fds(env) == [InheritedSocket(3, "web"), InheritedSocket(4, "admin")]
    assert env == {}  # unset, so children do not take them for theirs


def test_systemd_listen_fds_ignores_another_process_variables() -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1)}
    assert listen_fds(env, unset_environment=False) == []
    assert "LISTEN_FDS" in env


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_FDS": "x", "LISTEN_PID": "PID"},
        {"LISTEN_FDS": "1", "LISTEN_PID": "-5"},
        {"LISTEN_FDS": "2", "LISTEN_PID": "PID", "LISTEN_FDNAMES": "one"},
    ],
)
def test_systemd_listen_fds_rejects_malformed_variables(env: dict[str, str]) -> None:
    env = {k: v.replace("PID", str(os.getpid())) for k, v in env.items()}
    with pytest.raises(triosrv.ConfigError, match="LISTEN_"):
        listen_fds(env)


def test_systemd_notify_sends_to_path_and_abstract_sockets(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        assert notify("READY=1", {"NOTIFY_SOCKET": path})
        assert receiver.recv(100) == b"READY=1"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(f"\0triosrv-test-{os.getpid()}")
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": f"@triosrv-test-{os.getpid()}"})
        assert parse_notification(receiver.recv(100)) == {"STOPPING": "1"}


def test_systemd_notify_without_socket_does_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert "cannot notify" in caplog.text


# -- fd:// binds -------------------------------------------------------------------------


async def echo_once(family: int, address: object) -> bytes:
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    with sock:
        await sock.connect(address)
        await sock.send(b"ping")
        with trio.fail_after(10):
            return await sock.recv(10)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6, socket.AF_UNIX])
async def test_systemd_fd_bind_reads_family_and_serves(family: int, tmp_path: Path) -> None:
    address: object = {
        socket.AF_INET: ("127.0.0.1", 0),
        socket.AF_INET6: ("::1", 0),
        socket.AF_UNIX: str(tmp_path / "s"),
    }[family]
    inherited = socket.socket(family, socket.SOCK_STREAM)
    try:
        inherited.bind(address)  # bound, not listening: the server calls listen()
    except OSError as exc:  # e.g. no IPv6 loopback on this machine
        inherited.close()
        pytest.skip(f"cannot bind {address}: {exc}")
    fd = inherited.detach()  # the server owns it from here on
    async with running_server("echo", binds=[f"fd://{fd}"]) as server:
        listening = server._listeners[0].sock
        assert listening.family == family
        reply = await echo_once(family, listening.getsockname())
    assert reply == b"ping"
    if family == socket.AF_UNIX:
        # The socket file is not ours to remove: whoever bound it does.
        assert (tmp_path / "s").exists()


async def test_systemd_fd_bind_refuses_a_datagram_socket_and_leaves_it_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
        with pytest.raises(triosrv.BindError, match=r"fd://\d+: AF_INET/SOCK_DGRAM is not"):
            async with running_server("echo", binds=[f"fd://{dgram.fileno()}"]):
                pass  # pragma: no cover
        assert dgram.fileno() != -1
        os.fstat(dgram.fileno())  # still open


async def test_systemd_fd_bind_refuses_a_closed_fd() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(triosrv.BindError, match=f"cannot bind fd://{fd}"):
        async with running_server("echo", binds=[f"fd://{fd}"]):
            pass  # pragma: no cover


def test_systemd_fd_bind_parses() -> None:
    assert str(triosrv.parse_bind("fd://3")) == "fd://3"
    for bad in ("fd://", "fd://-1", "fd://x", "fd://3.0"):
        with pytest.raises(triosrv.ConfigError, match="fd://"):
            triosrv.parse_bind(bad)


# -- playing systemd's part ------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def unit_command(key: str, rundir: Path | None = None) -> list[str]:
    """The words of the documented unit's ``key`` line (ExecStart=, ExecReload=), with
    its RuntimeDirectory (/run/triosrv) moved to ``rundir``."""
    service = (EXAMPLES / "triosrv.service").read_text()
    [line] = [x for x in service.splitlines() if x.startswith(f"{key}=")]
    if rundir is not None:
        line = line.replace("/run/triosrv", str(rundir))
    return line.removeprefix(f"{key}=").split()


def exec_start_arguments(rundir: Path | None = None) -> list[str]:
    """The arguments after ``listen`` on the documented unit's ExecStart line."""
    words = unit_command("ExecStart", rundir)
    return words[words.index("listen") + 1 :]


def test_systemd_howto_includes_the_example_units() -> None:
    howto = (EXAMPLES.parent / "docs" / "howto" / "systemd.md").read_text()
    for name in ("triosrv.socket", "triosrv.service"):
        assert f"```{{literalinclude}} ../../examples/{name}\n" in howto, name
    assert "--systemd" in exec_start_arguments()


# Started by the test in place of systemd: move the socket to fd 3, set LISTEN_PID to
# the pid that will run triosrv (exec keeps it), exec `python -m triosrv listen`.
LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "triosrv", "listen", *sys.argv[2:]])
"""


async def receive_notification(receiver: trio.socket.SocketType) -> dict[str, str]:
    with trio.fail_after(30):  # generous: a cold python start on a loaded machine
        return parse_notification(await receiver.recv(4096))


async def test_systemd_socket_activation_serves_without_binding_and_notifies(
    tmp_path: Path,
) -> None:
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    port = listening.getsockname()[1]
    notify_path = str(tmp_path / "notify")
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await receiver.bind(notify_path)
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "echo"}
    env["NOTIFY_SOCKET"] = notify_path
    fd = listening.fileno()
    # The documented unit's ExecStart arguments; no --bind: the socket is fd 3.
    command = [sys.executable, "-c", LAUNCHER, str(fd), *exec_start_arguments(tmp_path)]
    proc = await trio.lowlevel.open_process(command, env=env, pass_fds=[fd], stderr=subprocess.PIPE)
    listening.close()  # only the child holds it now: what it serves, it did not bind
    try:
        assert await receive_notification(receiver) == {"READY": "1"}
        assert await echo_once(socket.AF_INET, ("127.0.0.1", port)) == b"ping"
        # systemctl reload: the unit's ExecReload= command, synchronous.
        reload = unit_command("ExecReload", tmp_path)
        assert reload[0].endswith("/triosrv")
        reloaded = await trio.run_process(
            [sys.executable, "-m", "triosrv", *reload[1:]], capture_stdout=True
        )
        assert reloaded.stdout == b"reloaded: generation 2 serving\n"
        assert (await receive_notification(receiver))["RELOADING"] == "1"
        assert (await receive_notification(receiver))["READY"] == "1"
        assert await echo_once(socket.AF_INET, ("127.0.0.1", port)) == b"ping"
        proc.send_signal(signal.SIGTERM)
        assert await receive_notification(receiver) == {"STOPPING": "1"}
        with trio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        receiver.close()
        assert proc.stderr is not None
        log = (await proc.stderr.receive_some(65536)).decode()
        await proc.stderr.aclose()
    assert f"listening on tcp://127.0.0.1:{port}" in log


async def test_systemd_flag_without_sockets_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    result = await trio.run_process(
        [sys.executable, "-m", "triosrv", "listen", "--systemd"],
        env=env,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert b"--systemd: no socket was passed" in result.stderr


def test_systemd_logging_is_quiet_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="triosrv")
    assert not notify("READY=1", {})
    assert caplog.records == []
