"""Bind specs to listening sockets: the one module that calls bind() and setsockopt().

Every socket option triosrv sets lives here, so that what the server does to a socket
can be read in one place: the listeners' options in :func:`open_listeners`, the
accepted connections' in :func:`configure_accepted`.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Sequence

import attrs

from ._config import BindSpec
from ._errors import BindError

# The kernel caps the backlog at net.core.somaxconn, so asking for the most is the
# way to say "as deep as this machine allows" (trio does the same).
MAX_BACKLOG = 65535
# trio's SocketStream sets this too: the kernel reports a socket writable once less
# than 16 KiB is unsent, so a peer that stops reading blocks us after ~128 KiB
# instead of letting the kernel buffer megabytes.
NOTSENT_LOWAT = 16 * 1024


@attrs.define(eq=False)
class Listener:
    """A bound, listening, non-blocking socket and the address it serves.

    ``address`` is ``tcp://HOST:PORT`` (with the real port when 0 was asked for) or
    ``unix:PATH``. The owner calls :meth:`close` exactly once it is done.
    """

    sock: socket.socket
    address: str
    unix_path: str | None = None
    _unix_inode: int | None = None

    def close(self) -> None:
        """Close the socket and remove our Unix socket file (only if it is still ours)."""
        self.sock.close()
        if self.unix_path is not None and self._unix_inode is not None:
            try:
                if os.stat(self.unix_path).st_ino == self._unix_inode:
                    os.unlink(self.unix_path)
            except FileNotFoundError:
                pass
            self._unix_inode = None


def _bind_error(spec: BindSpec, exc: OSError) -> BindError:
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return BindError(exc.errno or 0, f"cannot bind {spec}: {reason}")


def open_listeners(
    specs: Sequence[BindSpec], *, backlog: int | None = None, unix_mode: int = 0o600
) -> list[Listener]:
    """Bind and listen on every spec; on any failure close what was opened and raise.

    A host name that resolves to several addresses (``localhost``) gets one listener
    per address, as with :func:`trio.open_tcp_listeners`.

    Raises :class:`~triosrv.BindError` with a one-line message.
    """
    listeners: list[Listener] = []
    try:
        for spec in specs:
            if spec.kind == "unix":
                listeners.append(_open_unix(spec, backlog, unix_mode))
            else:
                listeners.extend(_open_tcp(spec, backlog))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _open_tcp(spec: BindSpec, backlog: int | None) -> list[Listener]:
    try:
        infos = socket.getaddrinfo(
            spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(errno.EADDRNOTAVAIL, f"cannot bind {spec}: {exc.strerror}") from None
    seen: set[tuple[int, object]] = set()
    out: list[Listener] = []
    try:
        for family, type_, proto, _name, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
                sock.listen(backlog or MAX_BACKLOG)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                raise _bind_error(spec, exc) from None
            out.append(Listener(sock, _tcp_address(sock)))
    except BaseException:
        for listener in out:
            listener.close()
        raise
    return out


def _tcp_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        return f"tcp://[{host}]:{port}"
    return f"tcp://{host}:{port}"


def _remove_stale_unix_socket(spec: BindSpec) -> None:
    try:
        mode = os.lstat(spec.path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise BindError(errno.EEXIST, f"cannot bind {spec}: file exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(spec.path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(spec.path)  # nobody listens there: a stale file from a dead server
        return
    finally:
        probe.close()
    raise BindError(errno.EADDRINUSE, f"cannot bind {spec}: address already in use")


def _open_unix(spec: BindSpec, backlog: int | None, mode: int) -> Listener:
    _remove_stale_unix_socket(spec)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # On Linux the socket file takes the socket inode's mode at bind(), so setting
        # it first leaves no moment when the file is more open than asked.
        os.fchmod(sock.fileno(), mode)
        sock.bind(spec.path)
        os.chmod(spec.path, mode)
        sock.listen(backlog or MAX_BACKLOG)
        sock.setblocking(False)
        inode = os.stat(spec.path).st_ino
    except OSError as exc:
        sock.close()
        raise _bind_error(spec, exc) from None
    return Listener(sock, f"unix:{spec.path}", unix_path=spec.path, unix_inode=inode)


def configure_accepted(sock: socket.socket) -> None:
    """Options for an accepted connection: non-blocking, no Nagle delay, bounded unsent."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)


def format_peer(sock: socket.socket, addr: object) -> str:
    """A peer address as ``HOST:PORT`` / ``[V6]:PORT``, or ``unix`` for Unix peers."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
    return "unix"


def format_local(sock: socket.socket) -> str:
    """The local end of a connection, in the same form as :func:`format_peer`."""
    try:
        return (
            format_peer(sock, sock.getsockname())
            if sock.family != socket.AF_UNIX
            else (f"unix:{sock.getsockname()}")
        )
    except OSError:
        return "?"
