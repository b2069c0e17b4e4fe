"""The ``triosrv`` command line: the only module that imports click.

Commands stay thin: parse, build the config, call the library.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import click
import trio

from . import __version__
from ._config import Limits, ServerConfig, Timeouts
from ._errors import BindError, ConfigError
from ._handlers import load_handler
from ._runner import configure_logging, serve_until_signalled


class Seconds(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A positive number of seconds, or ``none`` for no limit."""

    name = "SECONDS|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if text in ("none", "off", "inf"):
            return None
        try:
            seconds = float(text)
        except ValueError:
            self.fail(f"expected seconds or 'none', got {value!r}", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"expected a positive number of seconds or 'none', got {value!r}", param, ctx)
        return seconds


SECONDS = Seconds()
_DEFAULTS = Timeouts()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="triosrv")
def main() -> None:
    """triosrv: a structured-concurrency TCP server toolkit on trio."""


@main.command()
@click.option(
    "--bind",
    "binds",
    multiple=True,
    metavar="ADDR",
    help="HOST:PORT, [V6ADDR]:PORT or unix:PATH; repeatable. Default 127.0.0.1:8888.",
)
@click.option("--host", default=None, help="Shorthand for --bind HOST:PORT (default 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Shorthand for --bind HOST:PORT (default 8888); 0 picks a free port.",
)
@click.option(
    "--handler",
    "handler_spec",
    default="echo",
    show_default=True,
    help="echo, discard, chargen, daytime, or module:callable for your own.",
)
@click.option(
    "--idle-timeout",
    type=SECONDS,
    default=_DEFAULTS.idle,
    show_default=True,
    help="Seconds one receive may wait for the peer.",
)
@click.option(
    "--write-timeout",
    type=SECONDS,
    default=_DEFAULTS.write,
    show_default=True,
    help="Seconds one send may wait for a peer that does not read.",
)
@click.option(
    "--lifetime",
    type=SECONDS,
    default=_DEFAULTS.lifetime,
    show_default=True,
    help="Seconds a connection may live at all.",
)
@click.option(
    "--handshake-timeout",
    type=SECONDS,
    default=_DEFAULTS.handshake,
    show_default=True,
    help="Seconds for the TLS handshake and PROXY header.",
)
@click.option(
    "--grace",
    type=SECONDS,
    default=_DEFAULTS.grace,
    show_default=True,
    help="Seconds running connections get to finish on SIGINT/SIGTERM.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=Limits().max_connections,
    show_default=True,
    help="Connections served at once.",
)
@click.option(
    "--overload",
    type=click.Choice(["wait", "reject"]),
    default="wait",
    show_default=True,
    help="When full: wait (leave newcomers in the kernel backlog) or reject them.",
)
@click.option(
    "--backlog",
    type=click.IntRange(1, 65535),
    default=None,
    help="Listen backlog (default: the kernel's maximum).",
)
@click.option(
    "--recv-size",
    type=click.IntRange(1, 16 * 1024 * 1024),
    default=Limits().recv_size,
    show_default=True,
    help="Bytes asked for per receive.",
)
@click.option(
    "--on-handler-error",
    type=click.Choice(["log", "raise"]),
    default="log",
    show_default=True,
    help="log: isolate handler crashes; raise: stop the server.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def listen(**opts: Any) -> None:
    """Run a server until SIGINT or SIGTERM (graceful drain; a second signal cancels)."""
    try:
        handler = load_handler(opts["handler_spec"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--handler'") from None
    try:
        config = _listen_config(opts)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    configure_logging(opts["log_level"], opts["log_format"])
    try:
        trio.run(serve_until_signalled, handler, config)
    except BindError as exc:
        click.echo(f"error: {exc.strerror}", err=True)
        sys.exit(1)


def _listen_config(opts: dict[str, Any]) -> ServerConfig:
    binds = list(opts["binds"])
    if opts["host"] is not None or opts["port"] is not None or not binds:
        host = opts["host"] or "127.0.0.1"
        port = 8888 if opts["port"] is None else opts["port"]
        binds.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return ServerConfig(
        binds=binds,
        backlog=opts["backlog"],
        timeouts=Timeouts(
            idle=opts["idle_timeout"],
            write=opts["write_timeout"],
            lifetime=opts["lifetime"],
            handshake=opts["handshake_timeout"],
            grace=opts["grace"],
        ),
        limits=Limits(
            max_connections=opts["max_connections"],
            overload=opts["overload"],
            recv_size=opts["recv_size"],
        ),
        handler_errors=opts["on_handler_error"],
    )
