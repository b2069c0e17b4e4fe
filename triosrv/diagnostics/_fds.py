"""``triosrv diag fds``: a process's file descriptors, read from /proc.

For each fd: its number, a kind (socket, pipe, file, dir, tty, device, eventpoll,
eventfd, signalfd, timerfd, anon) and what it points at. Sockets are looked up by
inode in the process's own network namespace (``/proc/PID/net/tcp``, ``tcp6``,
``unix``), which gives TCP sockets their local and remote address and state, and
Unix sockets their path.

Reading another user's process needs that user or root; the error says so.

Without /proc (macOS, the BSDs) only this process's own fds can be read: they are
listed portably (:func:`triosrv._platform.open_fd_numbers`), described by ``fstat``,
and each socket asked for its own addresses; its state is then ``LISTEN``,
``CONNECTED`` or ``UNCONNECTED`` (the TCP state machine's finer states need /proc).
Another process's fds are reported as unavailable, in one line.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections import Counter
from collections.abc import Iterator

import attrs

from .._platform import describe_fd, open_fd_numbers
from ._errors import DiagnosticsError
from ._table import render_table

# include/net/tcp_states.h
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
# /proc/net/unix: the __SO_ACCEPTCON flag marks a listening socket; St 3 is connected.
_UNIX_ACCEPTCON = 0x10000
_UNIX_CONNECTED = 3
_ANON_KINDS = {
    "[eventpoll]": "eventpoll",
    "[eventfd]": "eventfd",
    "[signalfd]": "signalfd",
    "[timerfd]": "timerfd",
}


@attrs.frozen(kw_only=True)
class FdInfo:
    """One open fd. ``proto``, ``local``, ``remote`` and ``state`` are set for
    sockets found in the process's socket tables (``tcp``, ``tcp6``, ``unix``)."""

    fd: int
    kind: str
    target: str
    proto: str | None = None
    local: str | None = None
    remote: str | None = None
    state: str | None = None


@attrs.frozen(kw_only=True)
class _SocketInfo:
    proto: str
    local: str | None
    remote: str | None
    state: str


def _ipv4(hex_addr: str) -> str:
    # /proc prints the address as the host-order integer of network-order bytes.
    return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(hex_addr, 16)))


def _ipv6(hex_addr: str) -> str:
    words = [int(hex_addr[i : i + 8], 16) for i in range(0, 32, 8)]
    return socket.inet_ntop(socket.AF_INET6, struct.pack("<4I", *words))


def _endpoint(text: str, v6: bool) -> str:
    hex_addr, hex_port = text.split(":")
    port = int(hex_port, 16)
    return f"[{_ipv6(hex_addr)}]:{port}" if v6 else f"{_ipv4(hex_addr)}:{port}"


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read().splitlines()[1:]  # skip the header
    except FileNotFoundError:
        return []


def _tcp_sockets(pid: int) -> Iterator[tuple[int, _SocketInfo]]:
    for name, v6 in (("tcp", False), ("tcp6", True)):
        for line in _read_lines(f"/proc/{pid}/net/{name}"):
            fields = line.split()
            if len(fields) < 10:
                continue
            state = TCP_STATES.get(int(fields[3], 16), fields[3])
            info = _SocketInfo(
                proto=name,
                local=_endpoint(fields[1], v6),
                # a listening socket has no peer; /proc prints the wildcard 0.0.0.0:0
                remote=None if state == "LISTEN" else _endpoint(fields[2], v6),
                state=state,
            )
            yield int(fields[9]), info


def _unix_sockets(pid: int) -> Iterator[tuple[int, _SocketInfo]]:
    # Num RefCount Protocol Flags Type St Inode [Path]
    for line in _read_lines(f"/proc/{pid}/net/unix"):
        fields = line.split(maxsplit=7)
        if len(fields) < 7:
            continue
        flags, st = int(fields[3], 16), int(fields[5], 16)
        if flags & _UNIX_ACCEPTCON:
            state = "LISTEN"
        else:
            state = "CONNECTED" if st == _UNIX_CONNECTED else "UNCONNECTED"
        path = fields[7] if len(fields) == 8 else None
        yield int(fields[6]), _SocketInfo(proto="unix", local=path, remote=None, state=state)


def socket_table(pid: int) -> dict[int, _SocketInfo]:
    """TCP and Unix sockets of ``pid``'s network namespace, by inode."""
    table = dict(_unix_sockets(pid))
    table.update(_tcp_sockets(pid))
    return table


def _classify(path: str, target: str) -> str:
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("anon_inode:"):
        return _ANON_KINDS.get(target.removeprefix("anon_inode:"), "anon")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:  # closed since listdir, or a deleted file
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISCHR(mode):
        is_tty = target.startswith(("/dev/pts/", "/dev/tty", "/dev/console"))
        return "tty" if is_tty else "device"
    if stat.S_ISFIFO(mode):
        return "pipe"
    return "file"


def _own_socket(fd: int, target: str) -> FdInfo:
    # Without /proc: ask the socket itself, through a duplicate closed right after.
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:  # closed meanwhile, or not a socket Python can wrap
        return FdInfo(fd=fd, kind="socket", target=target)
    with sock:
        family, kind = sock.family, sock.type
        inet = family in (socket.AF_INET, socket.AF_INET6)
        proto = {socket.AF_INET: "tcp", socket.AF_INET6: "tcp6", socket.AF_UNIX: "unix"}.get(
            family, f"family {int(family)}"
        )
        if inet and kind == socket.SOCK_DGRAM:
            proto = proto.replace("tcp", "udp")
        local = _address(sock.getsockname())
        try:
            remote = _address(sock.getpeername())
        except OSError:
            remote = None
        listening = kind == socket.SOCK_STREAM and sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        )
    state = "LISTEN" if listening else "CONNECTED" if remote is not None else "UNCONNECTED"
    return FdInfo(
        fd=fd, kind="socket", target=target, proto=proto, local=local, remote=remote, state=state
    )


def _address(addr: object) -> str | None:
    # getsockname()'s shapes: (host, port[, ...]) for inet, a str (or b"" unnamed) for unix.
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(addr, bytes):
        addr = addr.decode("utf-8", "replace")
    text = str(addr)
    return "@" + text[1:] if text.startswith("\0") else text or None  # Linux's abstract names


def _own_fd_table() -> list[FdInfo]:
    out = []
    for fd in open_fd_numbers():
        described = describe_fd(fd)
        if described is None:
            continue  # closed while we looked
        kind, target = described
        out.append(
            _own_socket(fd, target) if kind == "socket" else FdInfo(fd=fd, kind=kind, target=target)
        )
    return out


def _no_proc() -> bool:
    return not os.path.isdir("/proc/self/fd")


def _check_pid_exists(pid: int) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise DiagnosticsError(f"no process with pid {pid}") from None
    except PermissionError:
        pass  # it exists; another user's


def _list_fds(pid: int) -> list[int]:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        raise DiagnosticsError(f"no process with pid {pid}") from None
    except PermissionError:
        raise DiagnosticsError(
            f"cannot read the fds of pid {pid}: permission denied (run as its user or root)"
        ) from None
    return sorted(int(name) for name in names)


def fd_table(pid: int | None = None) -> list[FdInfo]:
    """The open fds of ``pid`` (default: this process), sorted by number.

    Raises :class:`DiagnosticsError` if the process does not exist or its fds cannot
    be read. An fd closed while we look is left out.
    """
    pid = os.getpid() if pid is None else pid
    if pid <= 0:
        raise DiagnosticsError(f"no process with pid {pid}")
    if _no_proc():
        if pid == os.getpid():
            return _own_fd_table()
        _check_pid_exists(pid)
        raise DiagnosticsError(
            f"the fds of pid {pid} are unavailable: reading another process's fds needs "
            "/proc, which this platform lacks (only this process's own can be listed)"
        )
    fds = _list_fds(pid)
    sockets: dict[int, _SocketInfo] | None = None
    out = []
    for fd in fds:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(path)
        except FileNotFoundError:
            continue  # closed while we looked
        except OSError as exc:
            if exc.errno != errno.EACCES:
                raise
            raise DiagnosticsError(f"cannot read fd {fd} of pid {pid}: permission denied") from None
        kind = _classify(path, target)
        if kind != "socket":
            out.append(FdInfo(fd=fd, kind=kind, target=target))
            continue
        if sockets is None:
            sockets = socket_table(pid)
        found = sockets.get(int(target[len("socket:[") : -1]))
        if found is None:  # UDP, netlink, ...: not in the tables we read
            out.append(FdInfo(fd=fd, kind=kind, target=target))
        else:
            out.append(FdInfo(fd=fd, kind=kind, target=target, **attrs.asdict(found)))
    return out


def fd_summary(fds: list[FdInfo]) -> dict[str, int]:
    """Counts by kind, most common first."""
    return dict(Counter(info.kind for info in fds).most_common())


def render_fds(pid: int, fds: list[FdInfo]) -> str:
    """The fd table and a summary line."""
    rows = [
        (info.fd, info.kind, info.proto, info.local, info.remote, info.state, info.target)
        for info in fds
    ]
    table = render_table(("FD", "KIND", "PROTO", "LOCAL", "REMOTE", "STATE", "TARGET"), rows)
    counts = ", ".join(f"{count} {kind}" for kind, count in fd_summary(fds).items())
    return f"{table}\npid {pid}: {len(fds)} fds: {counts or 'none'}"
