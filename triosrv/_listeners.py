"""Bind specs to listening sockets: the one module that calls bind() and setsockopt().

Every socket option triosrv sets lives here, so that what the server does to a socket
can be read in one place: the listeners' options in :func:`open_listeners`, the
accepted connections' in :func:`configure_accepted`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import secrets
import socket
import stat
from collections.abc import Sequence

import attrs

from ._config import BindSpec
from ._errors import BindError

logger = logging.getLogger("triosrv")

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
                if os.lstat(self.unix_path).st_ino == self._unix_inode:
                    os.unlink(self.unix_path)
            except FileNotFoundError:
                pass  # removed by someone else already: nothing of ours is left
            except OSError as exc:  # the directory changed under us: leave the file
                logger.warning("could not remove %s: %s", self.unix_path, exc.strerror)
            self._unix_inode = None


def _bind_error(spec: BindSpec, exc: OSError) -> BindError:
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return BindError(exc.errno or 0, f"cannot bind {spec}: {reason}")


def open_listeners(
    specs: Sequence[BindSpec],
    *,
    backlog: int | None = None,
    unix_mode: int = 0o600,
    reuse_port: bool = False,
) -> list[Listener]:
    """Bind and listen on every spec; on any failure close what was opened and raise.

    A host name that resolves to several addresses (``localhost``) gets one listener
    per address, as with :func:`trio.open_tcp_listeners`. ``[::]:PORT`` is dual-stack
    (IPv4 clients arrive as mapped addresses, shown as plain IPv4); other IPv6 binds
    are IPv6-only, so ``0.0.0.0:P`` and ``[::1]:P`` can be bound side by side.
    ``reuse_port`` sets SO_REUSEPORT on TCP listeners (several processes, one port).
    ``fd://N`` takes over an inherited socket (see :func:`_open_fd`).

    Raises :class:`~triosrv.BindError` with a one-line message.
    """
    listeners: list[Listener] = []
    try:
        for spec in specs:
            if spec.kind == "unix":
                listeners.append(_open_unix(spec, backlog, unix_mode))
            elif spec.kind == "fd":
                listeners.append(_open_fd(spec, backlog))
            else:
                listeners.extend(_open_tcp(spec, backlog, reuse_port=reuse_port))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _resolve(spec: BindSpec) -> list[tuple[int, int, int, tuple[object, ...]]]:
    try:
        infos = socket.getaddrinfo(
            spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(errno.EADDRNOTAVAIL, f"cannot bind {spec}: {exc.strerror}") from None
    except UnicodeError:  # the IDNA codec refused the name (parse_bind checks it too)
        raise BindError(errno.EADDRNOTAVAIL, f"cannot bind {spec}: not a valid host name") from None
    seen: set[tuple[int, object]] = set()
    out: list[tuple[int, int, int, tuple[object, ...]]] = []
    for family, type_, proto, _name, sockaddr in infos:
        if (family, sockaddr) not in seen:
            seen.add((family, sockaddr))
            out.append((family, type_, proto, tuple(sockaddr)))
    return out


def _dual_stack(spec: BindSpec) -> bool:
    # Only an explicit "[::]" asks for both families on one socket; a name that
    # resolves to "::" and "0.0.0.0" gets two sockets, which would then collide.
    try:
        return ipaddress.ip_address(spec.host.split("%", 1)[0]) == ipaddress.IPv6Address("::")
    except ValueError:
        return False


def _stream_socket(
    spec: BindSpec,
    family: int,
    type_: int,
    proto: int,
    *,
    reuse_port: bool,
    reuse_addr: bool = True,
) -> socket.socket:
    sock = socket.socket(family, type_, proto)
    try:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            v6only = 0 if _dual_stack(spec) else 1
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    except BaseException:
        sock.close()
        raise
    return sock


def _open_tcp(spec: BindSpec, backlog: int | None, *, reuse_port: bool) -> list[Listener]:
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):  # Linux 3.9+, macOS, BSDs have it
        raise BindError(
            errno.ENOPROTOOPT,
            f"cannot bind {spec}: --reuse-port needs SO_REUSEPORT, which this platform lacks",
        )
    out: list[Listener] = []
    try:
        for family, type_, proto, sockaddr in _resolve(spec):
            try:
                sock = _stream_socket(spec, family, type_, proto, reuse_port=reuse_port)
            except OSError as exc:
                raise _bind_error(spec, exc) from None
            try:
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
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Every OSError here (a path component too long, a directory we may not
        # search, another user's socket in the way) is a bind failure: one line.
        _remove_stale_unix_socket(spec)
        # The socket file gets its mode at bind() from the umask, so the umask is set
        # to exactly what ``mode`` leaves out for that one call: the file is never
        # more open than asked, and nothing touches the path after bind() (a chmod or
        # stat by path would follow a symlink someone swapped in, in a shared
        # directory). The umask is process-wide: this runs at start-up, and anything
        # created in that instant gets a umask of at least the same strictness for
        # the usual 0600.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(spec.path)
        finally:
            os.umask(old_umask)
        sock.listen(backlog or MAX_BACKLOG)
        sock.setblocking(False)
        # The inode of what we bound, read through the socket's own name (lstat: a
        # symlink put there since is not ours and is never removed as ours).
        inode = os.lstat(spec.path).st_ino
    except OSError as exc:
        sock.close()
        raise _bind_error(spec, exc) from None
    except BaseException:
        sock.close()
        raise
    return Listener(sock, f"unix:{spec.path}", unix_path=spec.path, unix_inode=inode)


def _open_fd(spec: BindSpec, backlog: int | None) -> Listener:
    """Take over inherited socket ``fd``: family and type are read from the socket.

    A socket that is bound but not yet listening is made to listen. Refused (and left
    open, since it is not ours then): a fd that is not a socket, or not a stream.
    """
    try:
        sock = socket.socket(fileno=spec.fd)  # detects family, type and protocol
    except OSError as exc:
        raise _bind_error(spec, exc) from None
    if sock.type != socket.SOCK_STREAM or sock.family not in (
        socket.AF_INET,
        socket.AF_INET6,
        socket.AF_UNIX,
    ):
        kind = f"{sock.family.name}/{sock.type.name}"
        sock.detach()
        raise BindError(
            errno.ESOCKTNOSUPPORT, f"cannot serve {spec}: {kind} is not a TCP or Unix stream"
        )
    try:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.listen(backlog or MAX_BACKLOG)
        sock.set_inheritable(False)  # systemd hands it over inheritable; our children don't need it
        sock.setblocking(False)
        if sock.family == socket.AF_UNIX:
            name = sock.getsockname()
            address = f"unix:{name if isinstance(name, str) else name.decode(errors='replace')}"
        else:
            address = _tcp_address(sock)
    except OSError as exc:
        sock.detach()
        raise _bind_error(spec, exc) from None
    # unix_path stays None: the socket file belongs to whoever bound it (systemd).
    return Listener(sock, address)


def open_notify_receiver(path: str | None = None) -> tuple[socket.socket, str]:
    """A datagram socket for sd_notify messages, and its ``NOTIFY_SOCKET`` value.

    Without ``path`` (Linux): bound in the abstract namespace (no file to clean up),
    with SO_PASSCRED so every message arrives with its sender's pid, as systemd does
    it. With ``path`` (any POSIX system): bound there, no credentials; the caller
    removes the file. Non-blocking either way; the caller closes it.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        if path is None:
            name = f"triosrv-notify-{os.getpid()}-{secrets.token_hex(6)}"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind("\0" + name)
            address = "@" + name
        else:
            sock.bind(path)
            address = path
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, address


def configure_accepted(sock: socket.socket) -> None:
    """Options for an accepted connection: non-blocking, no Nagle delay, bounded unsent."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Linux and macOS bound the unsent bytes; FreeBSD has no such option (as trio).
        lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
        if lowat is not None:
            sock.setsockopt(socket.IPPROTO_TCP, lowat, NOTSENT_LOWAT)


def format_peer(sock: socket.socket, addr: object) -> str:
    """A peer address as ``HOST:PORT`` / ``[V6]:PORT``, or ``unix`` for Unix peers."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        if sock.family != socket.AF_INET6:
            return f"{host}:{port}"
        if host.startswith("::ffff:") and "." in host:  # IPv4 on a dual-stack socket
            return f"{host[7:]}:{port}"
        return f"[{host}]:{port}"
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
