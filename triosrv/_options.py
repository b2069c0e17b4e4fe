"""``triosrv listen``'s options as data: a config file, and options -> ServerConfig.

An *options mapping* holds ``listen``'s options keyed by the long option without its
dashes (``"idle-timeout"``, ``"bind"``, ``"workers"``): the keys a config file uses.
Three layers make the effective options, later ones winning (:func:`effective_options`):
the defaults (:data:`DEFAULTS`), a TOML file (:func:`read_config_file`), and the
options given on the command line. :func:`server_config` turns the result into a
:class:`~triosrv.ServerConfig`. Nothing here imports click, so the command line only
parses, and a reload (``_reload.py``) can redo the same steps without it.

Every check raises :class:`~triosrv.ConfigError` with one line that names the key
(and the file), so the CLI can print it as it is and exit 2.
"""

from __future__ import annotations

import difflib
import json
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from ._backends import check_backend
from ._config import (
    BACKENDS,
    Limits,
    ServerConfig,
    Timeouts,
    check_unix_path,
    is_positive_number,
    parse_bind,
)
from ._errors import ConfigError
from ._handlers import Handler, load_handler
from ._preamble import load_tls_context
from ._systemd import listen_fds

Check = Callable[[str, object], object]


def _seconds(key: str, value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in ("none", "off", "inf"):
        return None
    if value is None:
        return None
    return _positive(key, value, "a positive number of seconds or 'none'")


def _rate(key: str, value: object) -> object:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off")):
        return None
    return _positive(key, value, "a positive number of bytes per second or 'none'")


def _positive(key: str, value: object, what: str = "a positive number") -> float:
    if not is_positive_number(value):
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    return float(value)


def _int_range(low: int, high: int | None = None) -> Check:
    def check(key: str, value: object) -> object:
        within = isinstance(value, int) and not isinstance(value, bool) and value >= low
        if not within or (high is not None and value > high):  # type: ignore[operator]
            span = f"{low}..{high}" if high is not None else f">= {low}"
            raise ConfigError(f"{key}: expected an integer {span}, got {value!r}")
        return value

    return check


def _optional(check: Check) -> Check:
    def optional(key: str, value: object) -> object:
        return None if value is None else check(key, value)

    return optional


def _choice(*allowed: str) -> Check:
    def check(key: str, value: object) -> object:
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
        return value

    return check


def _text(key: str, value: object) -> object:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _flag(key: str, value: object) -> object:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _texts(key: str, value: object) -> object:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{key}: expected a string or a list of strings, got {value!r}")
    return tuple(_text(key, item) for item in items)


def _binds(key: str, value: object) -> object:
    binds: tuple[str, ...] = _texts(key, value)  # type: ignore[assignment]  # checked
    for text in binds:
        try:
            parse_bind(text)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {str(exc).removeprefix('binds: ')}") from None
    return binds


def _unix_path(key: str, value: object) -> object:
    return check_unix_path(key, _text(key, value))


def _allow_from(key: str, value: object) -> object:
    return ",".join(_texts(key, value))  # type: ignore[arg-type]  # a tuple of str


#: The most ``--workers`` accepted: a typo of a few digits must not fork until the
#: machine runs out of memory.
MAX_WORKERS = 1024

_TIMEOUTS, _LIMITS, _SERVER = Timeouts(), Limits(), ServerConfig()

#: Every option of ``triosrv listen``: key -> (check, default). The check takes the
#: key and a value (from TOML or click) and returns the value to use.
OPTIONS: dict[str, tuple[Check, object]] = {
    "bind": (_binds, ()),
    "host": (_optional(_text), None),
    "port": (_optional(_int_range(0, 65535)), None),
    "handler": (_text, "echo"),
    "backend": (_choice(*BACKENDS), _SERVER.backend),
    "nonblocking-interval": (_positive, _SERVER.nonblocking_interval),
    "idle-timeout": (_seconds, _TIMEOUTS.idle),
    "write-timeout": (_seconds, _TIMEOUTS.write),
    "lifetime": (_seconds, _TIMEOUTS.lifetime),
    "handshake-timeout": (_seconds, _TIMEOUTS.handshake),
    "grace": (_seconds, _TIMEOUTS.grace),
    "min-receive-rate": (_rate, _TIMEOUTS.min_receive_rate),
    "min-receive-rate-window": (_positive, _TIMEOUTS.min_receive_rate_window),
    "max-connections": (_int_range(1), _LIMITS.max_connections),
    "overload": (_choice("wait", "reject"), _LIMITS.overload),
    "backlog": (_optional(_int_range(1, 65535)), None),
    "recv-size": (_int_range(1, 16 * 1024 * 1024), _LIMITS.recv_size),
    "on-handler-error": (_choice("log", "raise"), _SERVER.handler_errors),
    "log-level": (_choice("debug", "info", "warning", "error"), "info"),
    "log-format": (_choice("text", "json"), "text"),
    "control": (_optional(_unix_path), None),
    "warn-blocking": (_seconds, None),
    "metrics": (_optional(_text), None),
    "certfile": (_optional(_text), None),
    "keyfile": (_optional(_text), None),
    "proxy-protocol": (_choice("off", "v1", "v2", "auto"), _SERVER.proxy_protocol),
    "proxy-allow-from": (_optional(_allow_from), None),
    "reuse-port": (_flag, False),
    "workers": (_optional(_int_range(1, MAX_WORKERS)), None),
    "systemd": (_flag, False),
}
#: The defaults of every option, as :func:`effective_options` starts from.
DEFAULTS: dict[str, object] = {key: default for key, (_check, default) in OPTIONS.items()}
#: Options that say where to listen: given on the command line, they replace the
#: file's as a group (a ``--port`` does not add to the file's ``bind``).
ADDRESS_KEYS = ("bind", "host", "port", "systemd")


def check_options(options: Mapping[str, object], *, where: str = "") -> dict[str, object]:
    """Check every key and value of an options mapping; return the converted copy.

    ``where`` (a file name) prefixes every message. Raises
    :class:`~triosrv.ConfigError` naming the first unknown key or bad value.
    """
    prefix = f"{where}: " if where else ""
    out: dict[str, object] = {}
    for key, value in options.items():
        if key not in OPTIONS:
            near = difflib.get_close_matches(key.replace("_", "-"), OPTIONS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{prefix}{key}: unknown option{hint}")
        check, _default = OPTIONS[key]
        try:
            out[key] = check(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}") from None
    return out


def read_config_file(path: str) -> dict[str, object]:
    """Read and check a TOML config file; return its options mapping.

    Raises :class:`~triosrv.ConfigError` (one line, naming the file and the key) if
    the file cannot be read, is not TOML, or has an unknown key or a bad value.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block start-up
            raise ConfigError(f"{path}: not a regular file")
        with open(path, "rb") as file:
            doc = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:  # arrays or inline tables nested past Python's limit
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    return check_options(doc, where=path)


def effective_options(
    given: Mapping[str, object], *, config_file: str | None = None
) -> dict[str, Any]:
    """The defaults, overridden by ``config_file`` (if any), overridden by ``given``.

    ``given`` holds the options set on the command line (or by a program). An address
    option given replaces the file's address options as a group (:data:`ADDRESS_KEYS`).
    Raises :class:`~triosrv.ConfigError`.
    """
    from_file = read_config_file(config_file) if config_file is not None else {}
    cli = check_options(given)
    if any(key in cli for key in ADDRESS_KEYS):
        from_file = {k: v for k, v in from_file.items() if k not in ADDRESS_KEYS}
    return {**DEFAULTS, **from_file, **cli}


def server_config(options: Mapping[str, Any]) -> ServerConfig:
    """The :class:`~triosrv.ServerConfig` an options mapping describes.

    Missing keys take their defaults. Without ``bind``, ``host`` or ``port`` the
    server listens on 127.0.0.1:8888, or on the sockets systemd passed (``systemd``,
    also automatic when no address is given). Raises :class:`~triosrv.ConfigError`
    (an unknown key, a bad value, ``systemd`` without sockets).
    """
    opts: dict[str, Any] = {**DEFAULTS, **check_options(options)}
    binds = [*opts["bind"], *_systemd_binds(opts)]
    if opts["host"] is not None or opts["port"] is not None or not binds:
        host = opts["host"] or "127.0.0.1"
        port = 8888 if opts["port"] is None else opts["port"]
        binds.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    allow: str | None = opts["proxy-allow-from"]
    try:
        return _build(opts, binds, allow)
    except ConfigError as exc:  # a cross-field check: say it with the option's name
        field, sep, rest = str(exc).partition(": ")
        raise ConfigError(f"{_key_of(field)}{sep}{rest}") from None


# ServerConfig's field names that differ from the option that sets them.
_FIELD_KEYS = {
    "binds": "bind",
    "tls_certfile": "certfile",
    "tls_keyfile": "keyfile",
    "idle": "idle-timeout",
    "write": "write-timeout",
    "handshake": "handshake-timeout",
    "handler_errors": "on-handler-error",
}


def _key_of(field: str) -> str:
    return _FIELD_KEYS.get(field, field.replace("_", "-"))


def _build(opts: Mapping[str, Any], binds: list[str], allow: str | None) -> ServerConfig:
    return ServerConfig(
        binds=binds,
        backlog=opts["backlog"],
        timeouts=Timeouts(
            idle=opts["idle-timeout"],
            write=opts["write-timeout"],
            lifetime=opts["lifetime"],
            handshake=opts["handshake-timeout"],
            grace=opts["grace"],
            min_receive_rate=opts["min-receive-rate"],
            min_receive_rate_window=opts["min-receive-rate-window"],
        ),
        limits=Limits(
            max_connections=opts["max-connections"],
            overload=opts["overload"],
            recv_size=opts["recv-size"],
        ),
        handler_errors=opts["on-handler-error"],
        backend=opts["backend"],
        nonblocking_interval=opts["nonblocking-interval"],
        warn_blocking=opts["warn-blocking"],
        tls_certfile=opts["certfile"],
        tls_keyfile=opts["keyfile"],
        proxy_protocol=opts["proxy-protocol"],
        reuse_port=opts["reuse-port"],
        **({"proxy_allow_from": allow} if allow else {}),  # type: ignore[arg-type]  # str
    )


def load_listen(options: Mapping[str, Any]) -> tuple[ServerConfig, Handler]:
    """Everything ``listen`` checks before it serves: the config, the handler (imported),
    the backend's fit with it, the TLS files. Raises :class:`~triosrv.ConfigError`,
    the handler's errors too (``handler: cannot import ...``)."""
    config = server_config(options)
    spec = options.get("handler", DEFAULTS["handler"])
    try:
        handler = load_handler(str(spec))
    except ValueError as exc:
        raise ConfigError(f"handler: {exc}") from None
    except Exception as exc:  # the user's module raised while it was imported
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ConfigError(f"handler: cannot import {spec!r}: {reason}") from None
    check_backend(config, handler)
    if config.tls_certfile is not None:
        try:
            load_tls_context(config.tls_certfile, config.tls_keyfile)
        except ConfigError as exc:
            field, sep, rest = str(exc).partition(": ")
            raise ConfigError(f"{_key_of(field)}{sep}{rest}") from None
    return config, handler


def _systemd_binds(opts: Mapping[str, Any]) -> list[str]:
    """The inherited sockets to serve: with ``systemd``, or when no address was given."""
    inherited = [sock.bind for sock in listen_fds()]
    if opts["systemd"] and not inherited:
        raise ConfigError("--systemd: no socket was passed (LISTEN_FDS/LISTEN_PID)")
    explicit = opts["bind"] or opts["host"] is not None or opts["port"] is not None
    return inherited if opts["systemd"] or not explicit else []


def format_options(options: Mapping[str, object]) -> str:
    """An options mapping as TOML lines, every key in :data:`OPTIONS` order.

    ``None`` is written ``"none"`` where the option accepts it; an unset option that
    has no "none" (``host``, ``port``, ...) is written as a comment. The output,
    saved, is a config file that means the same.
    """
    lines = []
    for key in OPTIONS:
        value = options.get(key, DEFAULTS[key])
        if value is None:
            if OPTIONS[key][0] in (_seconds, _rate):
                lines.append(f'{key} = "none"')
            else:
                lines.append(f"# {key} is not set")
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A JSON string is a TOML basic string: the same quotes and escapes.
    return json.dumps(str(value))
