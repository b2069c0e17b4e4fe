"""``triosrv diag fds``: the fd table from /proc, TCP states by inode, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from triosrv._cli import main
from triosrv.diagnostics import DiagnosticsError, FdInfo, fd_summary, fd_table, render_fds

from .diag_helpers import short_socket_path

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc")


def by_fd(infos: list[FdInfo]) -> dict[int, FdInfo]:
    return {info.fd: info for info in infos}


def test_fds_tcp_sockets_have_addresses_and_states() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        accepted, _ = server.accept()
        with accepted:
            table = by_fd(fd_table())
            port = server.getsockname()[1]
            listening = table[server.fileno()]
            assert (listening.kind, listening.proto, listening.state) == ("socket", "tcp", "LISTEN")
            assert listening.local == f"127.0.0.1:{port}" and listening.remote is None
            mine = table[client.fileno()]
            assert mine.state == "ESTABLISHED"
            assert mine.remote == f"127.0.0.1:{port}"
            theirs = table[accepted.fileno()]
            assert theirs.local == f"127.0.0.1:{port}"
            assert theirs.remote == mine.local


def test_fds_tcp6_and_unix_sockets() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with (
        short_socket_path() as path,
        socket.create_server(("::1", 0), family=socket.AF_INET6) as v6,
        socket.socket(socket.AF_UNIX) as unix,
    ):
        unix.bind(path)
        unix.listen()
        table = by_fd(fd_table())
        assert table[v6.fileno()].proto == "tcp6"
        assert table[v6.fileno()].local == f"[::1]:{v6.getsockname()[1]}"
        assert table[unix.fileno()].proto == "unix"
        assert (table[unix.fileno()].local, table[unix.fileno()].state) == (path, "LISTEN")


def test_fds_kinds_of_pipes_files_and_devices() -> None:
    read_end, write_end = os.pipe()
    try:
        with open(os.devnull, "rb") as null, open(__file__, "rb") as source:
            table = by_fd(fd_table())
            assert table[read_end].kind == table[write_end].kind == "pipe"
            assert (table[null.fileno()].kind, table[null.fileno()].target) == (
                "device",
                "/dev/null",
            )
            assert table[source.fileno()].kind == "file"
            assert table[source.fileno()].target == os.path.realpath(__file__)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_fds_of_another_process() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        table = by_fd(fd_table(child.pid))
        assert table[0].kind == "pipe"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


def test_fds_missing_pid_is_one_clear_error() -> None:
    with pytest.raises(DiagnosticsError, match="no process with pid 999999999"):
        fd_table(999999999)
    with pytest.raises(DiagnosticsError, match="no process with pid -3"):
        fd_table(-3)


def test_fds_summary_counts_by_kind() -> None:
    infos = [
        FdInfo(fd=0, kind="tty", target="/dev/pts/0"),
        FdInfo(fd=3, kind="socket", target="socket:[1]"),
        FdInfo(fd=4, kind="socket", target="socket:[2]"),
    ]
    assert fd_summary(infos) == {"socket": 2, "tty": 1}
    assert render_fds(7, infos).splitlines()[-1] == "pid 7: 3 fds: 2 socket, 1 tty"


def test_diag_fds_cli_table_and_json() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        text = CliRunner().invoke(main, ["diag", "fds"])
        doc_run = CliRunner().invoke(main, ["diag", "fds", "--json"])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0].split() == ["FD", "KIND", "PROTO", "LOCAL", "REMOTE", "STATE", "TARGET"]
    assert any(f"127.0.0.1:{port}" in line and "LISTEN" in line for line in lines)
    assert lines[-1].startswith(f"pid {os.getpid()}: ")
    assert doc_run.exit_code == 0, doc_run.output
    doc = json.loads(doc_run.output)
    assert doc["pid"] == os.getpid()
    assert sum(doc["summary"].values()) == len(doc["fds"])
    assert any(fd["local"] == f"127.0.0.1:{port}" for fd in doc["fds"])


def test_diag_fds_cli_missing_pid_exits_1_with_one_line() -> None:
    result = CliRunner().invoke(main, ["diag", "fds", "--pid", "999999999"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: no process with pid 999999999"
