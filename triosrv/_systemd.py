"""systemd's side of a service: socket activation and readiness notification.

Socket activation (``sd_listen_fds(3)``): systemd binds the sockets of a ``.socket``
unit itself and starts the service with them open from fd 3 on, saying so in
``LISTEN_FDS`` (how many), ``LISTEN_PID`` (for which process: the variables are
inherited by children, who must ignore them) and ``LISTEN_FDNAMES`` (``:``-separated
names). :func:`listen_fds` reads them; the server serves them as ``fd://N`` binds.

Readiness (``sd_notify(3)``): with ``Type=notify`` systemd waits for ``READY=1`` on the
datagram socket named by ``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace) before it calls the service started; ``STOPPING=1`` says a shutdown began.
:func:`notify` sends them; it does nothing when ``NOTIFY_SOCKET`` is not set.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import MutableMapping

import attrs

from ._errors import ConfigError

logger = logging.getLogger("triosrv")

#: The first fd systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3
_LISTEN_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
# Errors that mean "nobody listens on NOTIFY_SOCKET (any more)" or "its queue is
# full": a notification is advice, so they are logged, not raised.
_NOTIFY_ERRNOS = frozenset(
    {errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.EPERM, errno.EACCES}
)


@attrs.frozen
class InheritedSocket:
    """One socket passed by systemd: its fd and its name (``FileDescriptorName=``)."""

    fd: int
    name: str

    @property
    def bind(self) -> str:
        """The bind string that serves it: ``fd://N``."""
        return f"fd://{self.fd}"


def listen_fds(
    environ: MutableMapping[str, str] | None = None, *, unset_environment: bool = True
) -> list[InheritedSocket]:
    """The sockets systemd passed to this process, in order (empty if none).

    Empty too when ``LISTEN_PID`` names another process: the variables were inherited
    from a parent they were meant for. With ``unset_environment`` the three variables
    are removed, so that processes started from here do not see them.

    Raises :class:`~triosrv.ConfigError` if the variables are malformed.
    """
    env = os.environ if environ is None else environ
    count_text, pid_text = env.get("LISTEN_FDS"), env.get("LISTEN_PID")
    names_text = env.get("LISTEN_FDNAMES")
    if unset_environment:
        for name in _LISTEN_VARIABLES:
            env.pop(name, None)
    if count_text is None:
        return []
    if pid_text is not None:
        if not pid_text.isdigit():
            raise ConfigError(f"LISTEN_PID: expected a process id, got {pid_text!r}")
        if int(pid_text) != os.getpid():
            return []
    if not count_text.isdigit():
        raise ConfigError(f"LISTEN_FDS: expected a number of sockets, got {count_text!r}")
    count = int(count_text)
    names = names_text.split(":") if names_text else []
    if names and len(names) != count:
        raise ConfigError(f"LISTEN_FDNAMES: {len(names)} name(s) for LISTEN_FDS={count} socket(s)")
    names = names or ["unknown"] * count  # systemd's own name for unnamed sockets
    return [InheritedSocket(LISTEN_FDS_START + i, names[i]) for i in range(count)]


def notify(message: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to ``NOTIFY_SOCKET``, if it is set.

    Returns True if it was sent. A socket nobody listens on is logged as a warning,
    not raised: readiness is advice, and the service works without it.
    """
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET")
    if not target:
        return False
    if target.startswith("@"):
        address = "\0" + target[1:]
    elif target.startswith("/"):
        address = target
    else:
        logger.warning("NOTIFY_SOCKET=%r is not a socket path or @name; not notifying", target)
        return False
    # Close-on-exec already: Python's sockets are non-inheritable (PEP 446), and
    # SOCK_CLOEXEC is Linux-only.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.sendto(message.encode("utf-8"), socket.MSG_DONTWAIT, address)
    except OSError as exc:
        if exc.errno not in _NOTIFY_ERRNOS:
            raise
        logger.warning("cannot notify %s of %s: %s", target, message, exc.strerror)
        return False
    finally:
        sock.close()
    return True


def parse_notification(data: bytes) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of one sd_notify datagram, as a dict."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields
