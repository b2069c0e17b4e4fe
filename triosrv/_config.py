"""Configuration: frozen, keyword-only attrs classes, validated on construction.

Nothing here does I/O. Bind strings are parsed into :class:`BindSpec` so that a typo
fails when the config is built, not when the server starts. Every bad value raises
:class:`~triosrv.ConfigError` naming the field and what it accepts.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Iterable
from typing import Any, Literal, TypeGuard

import attrs

from ._errors import ConfigError

OVERLOAD_MODES = ("wait", "reject")
HANDLER_ERROR_MODES = ("log", "raise")
#: The server designs :class:`ServerConfig` can select (see docs/explanation/backends.md).
BACKENDS = ("trio", "trio-fd", "epoll", "poll", "select", "nonblocking", "blocking")
PROXY_PROTOCOL_MODES = ("off", "v1", "v2", "auto")
# Who may send a PROXY header when proxy_allow_from is not given: this machine only.
DEFAULT_PROXY_ALLOW_FROM = ("127.0.0.0/8", "::1/128")


def is_positive_number(value: object) -> TypeGuard[int | float]:
    """True for a finite int or float above zero (not a bool): the one test of a
    positive number, for the config's validators and the option parsers."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _seconds(field: str, *, allow_none: bool = True, unit: str = "seconds") -> Any:
    def check(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
        if value is None and allow_none:
            return
        if not is_positive_number(value):
            what = f"a positive number of {unit}" + (" or None" if allow_none else "")
            raise ConfigError(f"{field}: expected {what}, got {value!r}")

    return check


def _positive_int(field: str, maximum: int | None = None) -> Any:
    def check(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{field}: expected a positive integer, got {value!r}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{field}: expected at most {maximum}, got {value!r}")

    return check


def _one_of(field: str, allowed: tuple[str, ...]) -> Any:
    def check(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ConfigError(f"{field}: expected one of {choices}, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class Timeouts:
    """Per-connection deadlines, in seconds; ``None`` disables one.

    - ``idle``: how long one receive may wait for bytes (:class:`~triosrv.IdleTimeout`).
    - ``write``: how long one send may wait for the peer to take bytes, i.e. a peer that
      stopped reading (:class:`~triosrv.WriteTimeout`). Progress restarts the clock.
    - ``lifetime``: how long a connection may live at all
      (:class:`~triosrv.LifetimeTimeout`).
    - ``handshake``: the TLS handshake and the PROXY header
      (:class:`~triosrv.HandshakeTimeout`).
    - ``grace``: how long :meth:`Server.shutdown` lets running connections finish
      before it cancels them.
    - ``min_receive_rate`` (bytes per second, ``None``: off, the default) and
      ``min_receive_rate_window`` (seconds): the defence against a slowloris, a peer
      that drips a byte just before each idle deadline. Every window seconds, a
      connection that received some bytes but fewer than ``rate * window`` during the
      window, and is waiting for more, is closed
      (:class:`~triosrv.SlowReceiveTimeout`). A silent window is left to ``idle``;
      a window that ends while the server is not waiting for the peer (it is sending,
      or the handler is busy) does not count. docs/howto/run-a-server.md says why it is off by
      default.
    """

    idle: float | None = attrs.field(default=60.0, validator=_seconds("idle"))
    write: float | None = attrs.field(default=60.0, validator=_seconds("write"))
    lifetime: float | None = attrs.field(default=None, validator=_seconds("lifetime"))
    handshake: float | None = attrs.field(default=10.0, validator=_seconds("handshake"))
    grace: float | None = attrs.field(default=10.0, validator=_seconds("grace"))
    min_receive_rate: float | None = attrs.field(
        default=None, validator=_seconds("min_receive_rate", unit="bytes per second")
    )
    min_receive_rate_window: float = attrs.field(
        default=10.0, validator=_seconds("min_receive_rate_window", allow_none=False)
    )


@attrs.frozen(kw_only=True)
class Limits:
    """Admission and buffer limits.

    - ``max_connections``: connections served at once.
    - ``overload``: what happens to connection ``max_connections + 1``. ``"wait"`` stops
      accepting, so newcomers wait in the kernel's backlog (backpressure); ``"reject"``
      accepts and closes them at once, and counts them in ``rejected``.
    - ``recv_size``: the most bytes one receive asks the kernel for.
    """

    max_connections: int = attrs.field(default=1000, validator=_positive_int("max_connections"))
    overload: Literal["wait", "reject"] = attrs.field(
        default="wait", validator=_one_of("overload", OVERLOAD_MODES)
    )
    recv_size: int = attrs.field(
        default=65536, validator=_positive_int("recv_size", maximum=16 * 1024 * 1024)
    )


@attrs.frozen
class BindSpec:
    """One parsed bind string: ``kind`` is ``"tcp"`` (host, port), ``"unix"`` (path)
    or ``"fd"`` (an inherited, already bound socket: ``fd``)."""

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_PORT = re.compile(r"[0-9]{1,10}")
# sun_path holds 108 bytes on Linux (104 on the BSDs), the terminating NUL included.
MAX_UNIX_PATH = 107


def check_unix_path(field: str, path: object) -> str:
    """``path`` if it can name a Unix socket; :class:`ConfigError` naming ``field``
    otherwise (empty, a NUL byte, longer than the kernel's sun_path)."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise ConfigError(f"{field}: unix: needs a path, got {path!r}")
    try:
        size = len(os.fsencode(path))
    except UnicodeEncodeError:
        raise ConfigError(f"{field}: the unix socket path is not valid text: {path!r}") from None
    if size > MAX_UNIX_PATH:
        raise ConfigError(
            f"{field}: the unix socket path is {size} bytes; at most {MAX_UNIX_PATH} fit"
        )
    return path


def parse_bind(text: str) -> BindSpec:
    """Parse ``HOST:PORT``, ``[V6ADDR]:PORT``, ``unix:PATH`` or ``fd://N``.

    ``fd://N`` is a socket this process inherited, bound already (systemd's socket
    activation); the server takes it over and closes it when it stops.

    Raises :class:`~triosrv.ConfigError` with the accepted forms.
    """
    forms = "expected HOST:PORT, [V6ADDR]:PORT, unix:PATH or fd://N"
    if not isinstance(text, str) or not text:
        raise ConfigError(f"binds: {forms}, got {text!r}")
    if text.startswith("fd://"):
        number = text[len("fd://") :]
        if not _PORT.fullmatch(number) or int(number) > 2**31 - 1:
            raise ConfigError(f"binds: fd:// needs a file descriptor number, got {text!r}")
        return BindSpec("fd", fd=int(number))
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        check_unix_path("binds", path)
        return BindSpec("unix", path=path)
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigError(f"binds: {forms}, got {text!r}")
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ConfigError(f"binds: {host!r} is not an IPv6 address in {text!r}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ConfigError(f"binds: {forms}, got {text!r}")
    # [0-9] only: str.isdigit() is true for "²" and int() reads Arabic-Indic digits.
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise ConfigError(f"binds: port must be 0..65535, got {port_text!r} in {text!r}")
    if not text.startswith("["):
        _check_host_name(host, text)
    return BindSpec("tcp", host=host, port=int(port_text))


def _check_host_name(host: str, text: str) -> None:
    # getaddrinfo() encodes a name with the IDNA codec, which raises UnicodeError (not
    # an OSError) for a label over 63 characters, an empty label, and the like.
    try:
        host.encode("idna")
    except UnicodeError as exc:
        reason = str(exc.__cause__ or exc).removeprefix("encoding with 'idna' codec failed ")
        raise ConfigError(f"binds: {host[:80]!r} is not a valid host name ({reason})") from None


def _to_binds(value: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _check_binds(_inst: object, _attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for text in value:
        parse_bind(text)
    if len(set(value)) != len(value):
        raise ConfigError(f"binds: each address may appear once, got {list(value)!r}")


def _check_backlog(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _positive_int("backlog", maximum=65535)(_inst, _attr, value)


def _check_mode(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ConfigError(f"unix_mode: expected a file mode 0..0o777, got {value!r}")


def _to_networks(value: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(item.strip() for item in value if item.strip())


def _check_networks(_inst: object, _attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for text in value:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(
                f"proxy_allow_from: expected CIDR networks such as 10.0.0.0/8 or ::1/128, "
                f"got {text!r}"
            ) from None
        try:
            ipaddress.ip_network(text, strict=True)
        except ValueError:
            # 1.2.3.4/8 would silently widen to 1.0.0.0/8: refuse, and say what it means.
            raise ConfigError(
                f"proxy_allow_from: {text!r} has host bits set; did you mean {network}?"
            ) from None


def _optional_path(field: str) -> Any:
    def check(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{field}: expected a file path or None, got {value!r}")

    return check


def _of_type(field: str, kind: type) -> Any:
    def check(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, kind):
            raise ConfigError(f"{field}: expected a {kind.__name__}, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything :func:`triosrv.serve` needs to know, validated when built.

    ``binds`` may be empty: the server then only serves streams handed to it with
    :meth:`Server.serve_stream` (useful in tests). ``backlog=None`` lets the kernel use
    its maximum (``net.core.somaxconn``). ``unix_mode`` is the file mode of Unix socket
    files. ``handler_errors="log"`` isolates handler crashes; ``"raise"`` lets them
    crash the server, as trio would.

    Deployment (see docs/howto/tls.md and haproxy.md): ``tls_certfile``/``tls_keyfile`` (PEM)
    wrap every connection in TLS; ``proxy_protocol`` (``"v1"``, ``"v2"`` or ``"auto"``
    for either) requires a PROXY header on every connection, accepted only from
    ``proxy_allow_from`` (CIDR networks; default loopback only; Unix-socket peers are
    always allowed); ``reuse_port`` sets SO_REUSEPORT on TCP listeners so several
    processes can bind one port. The TLS handshake and the PROXY header run under
    ``Timeouts.handshake``.

    ``backend`` picks the server design, one of :data:`BACKENDS` (docs/explanation/backends.md):
    ``"trio"`` (the default) and ``"trio-fd"`` run a task per connection, ``"epoll"``,
    ``"poll"``, ``"select"`` and ``"nonblocking"`` one loop for all, ``"blocking"`` a
    thread per connection. ``nonblocking_interval`` is how long the ``nonblocking``
    loop sleeps after a pass in which nothing moved.

    Use :func:`attrs.evolve` to derive a variant.
    """

    binds: tuple[str, ...] = attrs.field(
        default=("127.0.0.1:8888",), converter=_to_binds, validator=_check_binds
    )
    backlog: int | None = attrs.field(default=None, validator=_check_backlog)
    timeouts: Timeouts = attrs.field(factory=Timeouts, validator=_of_type("timeouts", Timeouts))
    limits: Limits = attrs.field(factory=Limits, validator=_of_type("limits", Limits))
    handler_errors: Literal["log", "raise"] = attrs.field(
        default="log", validator=_one_of("handler_errors", HANDLER_ERROR_MODES)
    )
    unix_mode: int = attrs.field(default=0o600, validator=_check_mode)
    #: Seconds one task step may hold the event loop before a warning is logged
    #: (``triosrv.diagnostics.BlockingDetector``); None: not measured.
    warn_blocking: float | None = attrs.field(default=None, validator=_seconds("warn_blocking"))
    tls_certfile: str | None = attrs.field(default=None, validator=_optional_path("tls_certfile"))
    tls_keyfile: str | None = attrs.field(default=None, validator=_optional_path("tls_keyfile"))
    proxy_protocol: Literal["off", "v1", "v2", "auto"] = attrs.field(
        default="off", validator=_one_of("proxy_protocol", PROXY_PROTOCOL_MODES)
    )
    proxy_allow_from: tuple[str, ...] = attrs.field(
        default=DEFAULT_PROXY_ALLOW_FROM, converter=_to_networks, validator=_check_networks
    )
    reuse_port: bool = attrs.field(default=False, validator=_of_type("reuse_port", bool))
    backend: str = attrs.field(default="trio", validator=_one_of("backend", BACKENDS))
    nonblocking_interval: float = attrs.field(
        default=0.001, validator=_seconds("nonblocking_interval", allow_none=False)
    )

    def __attrs_post_init__(self) -> None:
        if self.tls_keyfile is not None and self.tls_certfile is None:
            raise ConfigError("tls_keyfile: needs tls_certfile too")

    @property
    def bind_specs(self) -> tuple[BindSpec, ...]:
        """The parsed ``binds``."""
        return tuple(parse_bind(b) for b in self.binds)
