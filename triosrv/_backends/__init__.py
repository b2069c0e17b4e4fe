"""The seven server designs a :class:`~triosrv.Server` can run (``ServerConfig.backend``).

| backend       | module              | what it is                                      |
| ------------- | ------------------- | ----------------------------------------------- |
| `trio`        | ``_trio.py``        | task per connection, the handler on a stream    |
| `trio-fd`     | ``_trio_fd.py``     | task per connection, the protocol on the raw fd |
| `epoll`       | ``_single_loop.py`` | one loop, epoll                                 |
| `poll`        | ``_single_loop.py`` | one loop, poll() in a worker thread             |
| `select`      | ``_single_loop.py`` | one loop, select() in a worker thread           |
| `nonblocking` | ``_single_loop.py`` | one loop trying every fd, sleeping when idle    |
| `blocking`    | ``_blocking.py``    | a thread per connection, blocking calls         |
"""

from __future__ import annotations

import select

from .._config import BACKENDS, ServerConfig
from .._errors import ConfigError
from .._handlers import Handler
from ._base import Backend, BackendHost
from ._blocking import BlockingBackend
from ._single_loop import EpollBackend, NonblockingBackend, PollBackend, SelectBackend
from ._trio import TrioBackend
from ._trio_fd import TrioFdBackend

__all__ = [
    "Backend",
    "BackendHost",
    "TrioBackend",
    "available_backends",
    "check_backend",
    "make_backend",
    "missing_feature",
    "require_backend",
]

_BY_NAME: dict[str, type[Backend]] = {
    cls.name: cls
    for cls in (
        TrioBackend,
        TrioFdBackend,
        EpollBackend,
        PollBackend,
        SelectBackend,
        NonblockingBackend,
        BlockingBackend,
    )
}


# The backends that need more than trio and POSIX sockets, and what: the select module
# has epoll on Linux only, and poll on every POSIX system (not on Windows). Found by
# feature detection, so a platform that gains one gains the backend.
_NEEDS_SELECT = {"epoll": "epoll", "poll": "poll"}


def missing_feature(backend: str) -> str | None:
    """What this platform lacks to run ``backend`` (e.g. ``"select.epoll"``), or None."""
    needed = _NEEDS_SELECT.get(backend)
    if needed is None or hasattr(select, needed):
        return None
    return f"select.{needed}"


def available_backends() -> list[str]:
    """The backends this platform can run, in :data:`~triosrv._config.BACKENDS` order."""
    return [name for name in BACKENDS if missing_feature(name) is None]


def require_backend(backend: str) -> None:
    """Raise :class:`~triosrv.ConfigError` (one line: what is missing, what is available)
    if this platform cannot run ``backend``."""
    missing = missing_feature(backend)
    if missing is not None:
        raise ConfigError(
            f"backend: {backend!r} needs {missing}, which this platform lacks; "
            f"available backends: {', '.join(available_backends())}"
        )


def check_backend(config: ServerConfig, handler: object) -> None:
    """Raise :class:`~triosrv.ConfigError` if ``config.backend`` cannot serve ``handler``.

    The backend must run on this platform (:func:`require_backend`). Only the ``trio``
    backend runs an async handler, and only it runs TLS or the PROXY protocol: the
    others drive sans-IO protocols on plain sockets themselves, so they need a handler
    made by :func:`~triosrv.protocol_handler` (the built-in ones, or a
    :class:`~triosrv.protocols.Protocol` subclass given as ``module:Class``).
    """
    backend = config.backend
    require_backend(backend)
    if backend == "trio":
        return
    if not callable(getattr(handler, "protocol_factory", None)):
        name = getattr(handler, "__qualname__", None) or repr(handler)
        raise ConfigError(
            f"backend: {backend!r} drives sans-IO protocols itself and cannot run the "
            f"async handler {name}; give a Protocol subclass, or use backend 'trio'"
        )
    if config.tls_certfile is not None or config.proxy_protocol != "off":
        raise ConfigError(
            f"backend: {backend!r} serves plain connections; TLS and the PROXY protocol "
            "need backend 'trio'"
        )


def make_backend(host: BackendHost, handler: Handler) -> Backend:
    """The backend ``host.config.backend`` names, serving ``handler`` for ``host``."""
    return _BY_NAME[host.config.backend](host, handler)  # validated by ServerConfig
