"""The exception types of triosrv.

Every timeout a connection can hit derives from :class:`ConnectionTimeout` and carries
its ``kind`` ("idle", "write", "lifetime", "handshake", "slow_receive"), so the server
can count them per kind with one ``except`` clause.
"""

from __future__ import annotations

from typing import ClassVar


class ConfigError(ValueError):
    """A configuration value is not allowed.

    The message names the field and what it accepts, in one line, so the CLI can print
    it as it is.
    """


class BindError(OSError):
    """A listening socket could not be opened (address in use, permission, bad host).

    ``str(exc)`` is one line such as ``cannot bind 127.0.0.1:8888: address already in use``.
    """


class ConnectionTimeout(Exception):
    """Base class of the per-connection timeouts; ``kind`` names which one fired."""

    kind: ClassVar[str] = ""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds
        detail = f" after {seconds:g} s" if seconds is not None else ""
        super().__init__(f"{self.kind} timeout{detail}")


class IdleTimeout(ConnectionTimeout):
    """A receive waited longer than ``Timeouts.idle`` for bytes from the peer."""

    kind = "idle"


class WriteTimeout(ConnectionTimeout):
    """A send waited longer than ``Timeouts.write`` for the peer to take our bytes."""

    kind = "write"


class LifetimeTimeout(ConnectionTimeout):
    """The connection lived longer than ``Timeouts.lifetime``."""

    kind = "lifetime"


class HandshakeTimeout(ConnectionTimeout):
    """The TLS handshake or PROXY header took longer than ``Timeouts.handshake``."""

    kind = "handshake"


class SlowReceiveTimeout(ConnectionTimeout):
    """The peer sent too slowly: fewer than ``Timeouts.min_receive_rate`` bytes per
    second over a window of ``Timeouts.min_receive_rate_window`` seconds that ended
    while the server was waiting for its bytes (a slowloris that an idle timeout lets
    through). ``seconds`` is the window, ``rate`` the minimum in bytes per second.
    """

    kind = "slow_receive"

    def __init__(self, seconds: float | None = None, *, rate: float | None = None) -> None:
        super().__init__(seconds)
        self.rate = rate
        if rate is not None and seconds is not None:
            self.args = (f"slow_receive timeout: under {rate:g} bytes/s over {seconds:g} s",)


TIMEOUT_KINDS: tuple[str, ...] = ("idle", "write", "lifetime", "handshake", "slow_receive")


def lone_exception(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The one ``kind`` exception inside (nested) exception groups, or None.

    Nurseries wrap what their tasks raise; a caller that wants to report, say, a
    BindError as one line needs it back when it is the only thing that went wrong.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, kind) else None
