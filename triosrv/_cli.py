"""The ``triosrv`` command line: the only module that imports click.

Commands stay thin: parse, build the config, call the library.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import click
import trio

from . import __version__
from ._backends import available_backends, require_backend
from ._config import BACKENDS as SERVER_BACKENDS
from ._config import Limits, ServerConfig, Timeouts, parse_bind
from ._errors import BindError, ConfigError
from ._master import Master
from ._options import MAX_WORKERS, effective_options, format_options, load_listen
from ._runner import configure_logging, run_main
from ._workers import GenerationFailed
from .bench import (
    BACKENDS,
    LOAD_ENGINES,
    BackendsPlan,
    BenchError,
    LoadEngineError,
    bench_backends,
    bench_cpu,
    bench_load,
    bench_threads_vs_tasks,
)
from .bench._reload import ReloadPlan, bench_reload
from .chaos import SCENARIO_NAMES as CHAOS_SCENARIOS
from .chaos import (
    ChaosConfig,
    TargetError,
    format_header,
    format_result,
    format_summary,
    raise_fd_limit,
    run_chaos,
)
from .chaos import parse_target as parse_chaos_target
from .chaos._suite import run_suite
from .chaos._suite_plan import SUITE_SCENARIOS, Cell, SuitePlan, triosrv_spec
from .diagnostics import (
    DiagnosticsError,
    control_request,
    fd_summary,
    fd_table,
    render_fds,
    render_status,
    render_system,
    require_extra,
    system_facts,
    watch_status,
)
from .diagnostics._status import DEFAULT_LIMIT as DEFAULT_STATUS_LIMIT
from .diagnostics._status import MAX_LIMIT as MAX_STATUS_LIMIT


def _refuse_non_ascii_number(
    value: Any, kind: click.ParamType[Any], param: click.Parameter | None, ctx: click.Context | None
) -> None:
    # int() and float() take any Unicode decimal digit and underscores: Arabic-Indic
    # '\u0668\u0668' is 88, fullwidth digits and '8_888' are numbers too. An
    # operator's typo must not become a number.
    if isinstance(value, str) and (not value.isascii() or "_" in value):
        kind.fail(f"expected a number in ASCII digits, got {value!r}", param, ctx)


class IntRange(click.IntRange):
    """``click.IntRange`` that takes ASCII digits only (see ``_refuse_non_ascii_number``)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        _refuse_non_ascii_number(value, self, param, ctx)
        return super().convert(value, param, ctx)


class FloatRange(click.FloatRange):
    """``click.FloatRange`` that takes ASCII digits only and finite numbers (click's
    range check lets NaN through: every comparison with it is false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        _refuse_non_ascii_number(value, self, param, ctx)
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"expected a finite number, got {value!r}", param, ctx)
        return number


#: ``type=int`` with ASCII digits only.
INT = IntRange()


class Seconds(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A positive number of seconds, or ``none`` for no limit."""

    name = "SECONDS|none"
    unit = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, float):
            return value
        _refuse_non_ascii_number(value, self, param, ctx)
        text = str(value).strip().lower()
        if text in ("none", "off", "inf"):
            return None
        try:
            seconds = float(text)
        except ValueError:
            self.fail(f"expected {self.unit} or 'none', got {value!r}", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(
                f"expected a positive number of {self.unit} or 'none', got {value!r}", param, ctx
            )
        return seconds


class BytesPerSecond(Seconds):
    """A positive rate in bytes per second, or ``none`` for no minimum."""

    name = "BYTES_PER_S|none"
    unit = "bytes per second"


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
    type=IntRange(0, 65535),
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
    "--backend",
    type=click.Choice(SERVER_BACKENDS),
    default="trio",
    show_default=True,
    help="The server design: a task per connection (trio, trio-fd), one loop "
    "(epoll, poll, select, nonblocking) or a thread per connection (blocking).",
)
@click.option(
    "--nonblocking-interval",
    type=FloatRange(min=0, min_open=True),
    default=ServerConfig().nonblocking_interval,
    show_default=True,
    help="Seconds the nonblocking backend sleeps after a pass in which nothing moved.",
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
    help="Seconds running connections get to finish on SIGINT/SIGTERM, and the old "
    "generation's on a reload.",
)
@click.option(
    "--min-receive-rate",
    type=BytesPerSecond(),
    default=_DEFAULTS.min_receive_rate,
    show_default=True,
    help="Close a peer that, while we wait for it, sends some bytes but fewer than this "
    "many per second over a window (a slowloris); none: off.",
)
@click.option(
    "--min-receive-rate-window",
    type=FloatRange(min=0, min_open=True),
    default=_DEFAULTS.min_receive_rate_window,
    show_default=True,
    metavar="SECONDS",
    help="Seconds over which --min-receive-rate is measured.",
)
@click.option(
    "--max-connections",
    type=IntRange(min=1),
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
    type=IntRange(1, 65535),
    default=None,
    help="Listen backlog (default: the kernel's maximum).",
)
@click.option(
    "--recv-size",
    type=IntRange(1, 16 * 1024 * 1024),
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
@click.option(
    "--control",
    metavar="PATH",
    default=None,
    help="Serve the control endpoint (triosrv status) on this Unix socket, mode 0600.",
)
@click.option(
    "--warn-blocking",
    type=SECONDS,
    default=None,
    help="Log a warning when one task step holds the event loop longer than this.",
)
@click.option(
    "--metrics",
    metavar="HOST:PORT",
    default=None,
    help="Serve Prometheus metrics over HTTP here (needs the 'metrics' extra).",
)
@click.option(
    "--certfile", metavar="PEM", default=None, help="Serve TLS with this certificate chain."
)
@click.option(
    "--keyfile", metavar="PEM", default=None, help="The TLS private key (default: in --certfile)."
)
@click.option(
    "--proxy-protocol",
    type=click.Choice(["off", "v1", "v2", "auto"]),
    default="off",
    show_default=True,
    help="Require a PROXY header (HAProxy's send-proxy / send-proxy-v2; auto: either).",
)
@click.option(
    "--proxy-allow-from",
    metavar="CIDR,...",
    default=None,
    help="Who may send PROXY headers (default 127.0.0.0/8,::1/128).",
)
@click.option(
    "--reuse-port", is_flag=True, help="Set SO_REUSEPORT: other processes may bind the port."
)
@click.option(
    "--workers",
    type=IntRange(min=1, max=MAX_WORKERS),
    default=None,
    help="Run N worker processes sharing the listening sockets, restarted if they die.",
)
@click.option(
    "--systemd",
    is_flag=True,
    help="Serve the sockets systemd passed (LISTEN_FDS); automatic when no bind is given.",
)
@click.option(
    "--config",
    metavar="FILE",
    default=None,
    help="Read options from this TOML file (keys: the long options without dashes, "
    'e.g. idle-timeout = 30, bind = ["127.0.0.1:8888"]); options given here override it.',
)
@click.option(
    "--check-config",
    is_flag=True,
    help="Check the configuration (and import the handler), print it and exit: 0 if "
    "valid, 2 if not.",
)
def listen(**opts: Any) -> None:
    """Run a server until SIGINT or SIGTERM (graceful drain; a second signal cancels).

    Options can come from a TOML file (--config); those given here override it.
    SIGHUP reloads: re-reads the file, re-imports the handler and starts a new
    generation of worker processes on the same sockets; the old one drains.
    """
    ctx = click.get_current_context()
    given = _given_options(ctx)
    options: dict[str, Any]
    try:
        options = effective_options(given, config_file=opts["config"])
        _require_backend(str(options["backend"]))
        config, _handler = load_listen(options)
    except ConfigError as exc:
        message = str(exc)
        if message.startswith("handler: ") and "handler" in given:
            raise click.BadParameter(message[9:], param_hint="'--handler'") from None
        if opts["config"] is None:
            raise click.UsageError(message) from None
        # With a config file, one line that names the key, as nginx -t does.
        click.echo(f"error: {message}", err=True)
        sys.exit(2)
    if options["metrics"] is not None:  # before --check-config says "valid"
        _check_metrics_option(str(options["metrics"]))
    if opts["check_config"]:
        source = f" (from {opts['config']})" if opts["config"] else ""
        click.echo(f"# triosrv listen: the configuration is valid{source}")
        click.echo(format_options(options))
        return
    configure_logging(str(options["log-level"]), str(options["log-format"]))
    master = Master(given, opts["config"], options, config, _handler)
    try:
        sys.exit(run_main(master.run))
    except BindError as exc:
        _fail(str(exc.strerror))
    except GenerationFailed as exc:
        _fail(f"generation 1 could not start: {exc}")


# Options that shape the command rather than the server.
_NOT_OPTIONS = {"config", "check_config"}


def _given_options(ctx: click.Context) -> dict[str, object]:
    """The options set on the command line, keyed as in a config file."""
    given: dict[str, object] = {}
    for param in ctx.command.params:
        name = param.name
        if not isinstance(param, click.Option) or name is None or name in _NOT_OPTIONS:
            continue
        if ctx.get_parameter_source(name) in (None, click.core.ParameterSource.DEFAULT):
            continue
        given[param.opts[0].removeprefix("--")] = ctx.params[name]
    return given


def _check_metrics_option(value: str) -> None:
    try:
        spec = parse_bind(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="'--metrics'") from None
    if spec.kind != "tcp":
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint="'--metrics'")
    try:
        require_extra("metrics", "prometheus_client", "h11")
    except DiagnosticsError as exc:
        _fail(str(exc))


def _require_backend(name: str) -> None:
    # A backend this platform cannot run (epoll off Linux): one line, exit 2.
    try:
        require_backend(name)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit 1: what a dead socket or a missing pid gets."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _echo_json(doc: object) -> None:
    click.echo(json.dumps(doc, indent=2))


@main.group()
def diag() -> None:
    """Inspect this machine's limits and a process's file descriptors."""


@diag.command("system")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--max-connections",
    type=IntRange(min=1),
    default=Limits().max_connections,
    show_default=True,
    help="The connection count the hints compare the limits against.",
)
def diag_system(as_json: bool, max_connections: int) -> None:
    """Versions, I/O manager, multiplexers and the limits that bound a server."""
    facts = system_facts(max_connections=max_connections)
    if as_json:
        _echo_json({"facts": [attrs.asdict(fact) for fact in facts]})
    else:
        click.echo(render_system(facts))


@diag.command("fds")
@click.option("--pid", type=INT, default=None, help="The process to inspect (default: this one).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def diag_fds(pid: int | None, as_json: bool) -> None:
    """A process's open fds from /proc, with TCP addresses and states."""
    try:
        fds = fd_table(pid)
    except DiagnosticsError as exc:
        _fail(str(exc))
    shown_pid = os.getpid() if pid is None else pid
    if as_json:
        doc = {
            "pid": shown_pid,
            "fds": [attrs.asdict(info) for info in fds],
            "summary": fd_summary(fds),
        }
        _echo_json(doc)
    else:
        click.echo(render_fds(shown_pid, fds))


@main.command()
@click.option("--control", metavar="PATH", required=True, help="The server's --control socket.")
@click.option("--watch", type=SECONDS, default=None, help="Refresh every SECONDS until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON document.")
@click.option("--drain", is_flag=True, help="Start the server's graceful shutdown instead.")
@click.option(
    "--reload",
    is_flag=True,
    help="Reload the server instead (as SIGHUP does); wait until the new generation "
    "serves, or say why it failed (exit 1).",
)
@click.option(
    "--grace",
    type=FloatRange(min=0),
    default=None,
    help="With --drain: seconds connections get to finish (default: the server's --grace).",
)
@click.option(
    "--offset",
    type=IntRange(min=0),
    default=0,
    show_default=True,
    help="List the connections from this one on (by id order).",
)
@click.option(
    "--limit",
    type=IntRange(min=0, max=MAX_STATUS_LIMIT),
    default=DEFAULT_STATUS_LIMIT,
    show_default=True,
    help="List at most this many connections (one page of the status).",
)
def status(
    control: str,
    watch: float | None,
    as_json: bool,
    drain: bool,
    reload: bool,
    grace: float | None,
    offset: int,
    limit: int,
) -> None:
    """Show a running server's state, connections and task tree (or --drain or
    --reload it)."""
    if reload:
        if drain or grace is not None or watch is not None:
            raise click.UsageError("--reload goes alone (not with --drain, --grace, --watch)")
        answer = _control(control, {"cmd": "reload"}, timeout=RELOAD_TIMEOUT)
        if as_json:
            _echo_json(answer)
        else:
            click.echo(_render(lambda a: f"reloaded: generation {a['generation']} serving", answer))
        return
    if drain:
        request: dict[str, object] = {"cmd": "drain"}
        if grace is not None:
            request["grace"] = grace
        answer = _control(control, request)
        if as_json:
            _echo_json(answer)
        else:
            click.echo(_render(_drain_text, answer))
        return
    if grace is not None:
        raise click.UsageError("--grace goes with --drain")
    show = _echo_json if as_json else _show_status
    page: dict[str, object] = {"cmd": "status", "offset": offset, "limit": limit}
    if watch is None:
        show(_control(control, page))
        return
    try:
        trio.run(
            functools.partial(watch_status, request=page),
            control,
            watch,
            functools.partial(_refresh, show),
        )
    except DiagnosticsError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --watch ends


def _show_status(doc: dict[str, object]) -> None:
    click.echo(_render(render_status, doc))


def _drain_text(answer: dict[str, Any]) -> str:
    grace_text = "unlimited" if answer["grace"] is None else f"{answer['grace']:g} s"
    return f"draining {answer['active']} connection(s), grace {grace_text}"


def _render(render: Callable[[dict[str, Any]], str], answer: dict[str, Any]) -> str:
    # The answer is JSON but perhaps not triosrv's (another program on the socket, a
    # newer or older server): one line and exit 1, not a traceback.
    try:
        return render(answer)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        _fail(f"the answer is not a triosrv control answer ({type(exc).__name__}: {exc})")


def _refresh(show: Any, doc: dict[str, object]) -> None:
    if sys.stdout.isatty():
        click.clear()
    show(doc)


# Seconds `status --reload` waits: a new generation gets a minute to be ready.
RELOAD_TIMEOUT = 90.0


def _control(path: str, request: dict[str, object], timeout: float = 10.0) -> dict[str, Any]:
    try:
        answer = trio.run(functools.partial(control_request, path, request, timeout=timeout))
    except DiagnosticsError as exc:
        _fail(str(exc))
    if "error" in answer:
        _fail(f"server: {answer['error']}")
    return answer


_CHAOS = ChaosConfig()


@main.command()
@click.option("--target", required=True, metavar="HOST:PORT", help="The TCP server to attack.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(CHAOS_SCENARIOS),
    help="Run only this scenario; repeatable. Default: all of them, in this order.",
)
@click.option(
    "--duration",
    type=FloatRange(min=0, min_open=True),
    default=_CHAOS.duration,
    show_default=True,
    help="Seconds each attack lasts.",
)
@click.option(
    "--quiet",
    type=FloatRange(min=0, min_open=True),
    default=_CHAOS.quiet,
    show_default=True,
    help="Seconds of canary-only traffic before each attack (the baseline).",
)
@click.option(
    "--expect",
    type=click.Choice(["echo", "any"]),
    default=_CHAOS.expect,
    show_default=True,
    help="echo: check every reply byte for byte; any: the target is not an echo server.",
)
@click.option(
    "--connections",
    type=IntRange(min=1),
    default=_CHAOS.connections,
    show_default=True,
    help="Connections held at once by slowloris, slow-reader and idle.",
)
@click.option(
    "--flood",
    type=IntRange(min=1),
    default=_CHAOS.flood,
    show_default=True,
    help="Connections the flood opens.",
)
@click.option(
    "--churn",
    type=IntRange(min=1),
    default=_CHAOS.churn,
    show_default=True,
    help="Short connections churn opens at most.",
)
@click.option(
    "--drip-interval",
    type=FloatRange(min=0, min_open=True),
    default=_CHAOS.drip_interval,
    show_default=True,
    help="Seconds between slowloris's bytes.",
)
@click.option(
    "--max-p99-ratio",
    type=FloatRange(min=0),
    default=_CHAOS.max_p99_ratio,
    show_default=True,
    help="Fail when the canary's p99 under attack exceeds this many times its quiet p99 "
    "(and 20 ms); 0 turns the check off.",
)
@click.option("--seed", type=INT, default=_CHAOS.seed, show_default=True, help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--allow-non-loopback", is_flag=True, help="Allow a target that is not a loopback address."
)
def chaos(**opts: Any) -> None:
    """Attack a TCP server with misbehaving clients while a canary measures its service.

    Exits 0 when every scenario passed, 1 when one failed.
    """
    try:
        target = parse_chaos_target(opts["target"], allow_non_loopback=opts["allow_non_loopback"])
    except TargetError as exc:
        raise click.BadParameter(str(exc), param_hint="'--target'") from None
    fields = ("duration", "quiet", "expect", "connections", "flood", "churn", "drip_interval")
    config = ChaosConfig(
        scenarios=opts["scenarios"],
        max_p99_ratio=opts["max_p99_ratio"],
        seed=opts["seed"],
        **{name: opts[name] for name in fields},
    )
    raise_fd_limit()  # the flood needs thousands of sockets
    if not opts["as_json"]:
        click.echo(format_header(str(target), config))
    report = trio.run(
        functools.partial(
            run_chaos,
            target,
            config,
            on_result=None if opts["as_json"] else lambda r: click.echo(format_result(r)),
        )
    )
    click.echo(report.to_json() if opts["as_json"] else format_summary(report.results))
    sys.exit(0 if report.passed else 1)


def _comma_list(allowed: tuple[str, ...], what: str) -> Any:
    """A click callback: a comma-separated subset of ``allowed`` (all when not given)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
        if value is None:
            return list(allowed)
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise click.BadParameter(
                f"unknown {what}(s) {', '.join(unknown) or repr(value)}; "
                f"choose from {', '.join(allowed)}"
            )
        return names

    return parse


def _suite_progress(cell: Cell) -> None:
    # One line per cell on stderr, so a long run shows where it is; stdout gets the table.
    verdict = "ok" if cell.passed else "FAIL"
    click.echo(f"{cell.server:<12} {cell.scenario:<16} {verdict} {cell.figure}", err=True)


@main.command("chaos-suite")
@click.option(
    "--backends",
    callback=_comma_list(SERVER_BACKENDS, "backend"),
    metavar="NAME,...",
    help=f"Comma-separated subset of {','.join(SERVER_BACKENDS)} (default: all).",
)
@click.option(
    "--scenarios",
    callback=_comma_list(SUITE_SCENARIOS, "scenario"),
    metavar="NAME,...",
    help=f"Comma-separated subset of {','.join(SUITE_SCENARIOS)} (default: all).",
)
@click.option("--quick", is_flag=True, help="The short CI run (a few minutes).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.option("--no-pin", is_flag=True, help="Do not pin the servers to one CPU.")
@click.option(
    "--save",
    type=click.File("w", lazy=True),
    metavar="PATH",
    help="Also write the JSON document to PATH.",
)
def chaos_suite(
    backends: list[str],
    scenarios: list[str],
    quick: bool,
    as_json: bool,
    markdown: bool,
    no_pin: bool,
    save: Any,
) -> None:
    """Every backend against every chaos scenario, plus SIGTERM, SIGKILL and EMFILE.

    Each backend runs as its own `triosrv listen` process; prints one table, scenario x
    backend, each cell ok/FAIL with its key figure. Exits 0 when every cell passed, 1
    otherwise.
    """
    if as_json and markdown:
        raise click.UsageError("--json and --markdown exclude each other")
    plan = SuitePlan.choose(quick=quick, scenarios=scenarios, pin=not no_pin)
    raise_fd_limit()  # the flood and the EMFILE clients need thousands of sockets
    specs = [triosrv_spec(name) for name in backends]
    report = run_suite(specs, plan, on_cell=_suite_progress)
    if save is not None:
        save.write(report.to_json() + "\n")
        save.close()
    if as_json:
        click.echo(report.to_json())
    else:
        click.echo(report.format_markdown() if markdown else report.format_text())
    sys.exit(0 if report.passed else 1)


@main.group()
def bench() -> None:
    """Measure servers: echo load, the backends' table, threads vs tasks, CPU-bound work."""


@bench.command("load")
@click.option("--target", required=True, metavar="HOST:PORT", help="A loopback echo server.")
@click.option("--connections", type=IntRange(min=1), default=50, show_default=True)
@click.option("--size", type=IntRange(min=1), default=64, show_default=True, help="Bytes.")
@click.option(
    "--duration",
    type=FloatRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="Measured seconds.",
)
@click.option(
    "--warmup",
    type=FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="Seconds before measuring.",
)
@click.option(
    "--pipeline",
    type=IntRange(min=1),
    default=1,
    show_default=True,
    help="Messages in flight per connection.",
)
@click.option(
    "--processes",
    type=IntRange(min=1),
    default=1,
    show_default=True,
    help="Generator processes.",
)
@click.option(
    "--engine",
    type=click.Choice(LOAD_ENGINES),
    default="auto",
    show_default=True,
    help="The load generator: c (compiled on first use), python, or auto (c when a compiler "
    "builds it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_load_command(**opts: Any) -> None:
    """Drive an echo server and print round trips/s, latency percentiles, errors, CPU."""
    try:
        bench_load(opts.pop("target"), out=sys.stdout, **opts)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except LoadEngineError as exc:
        _fail(str(exc))


@bench.command("backends")
@click.option(
    "--backend",
    "names",
    multiple=True,
    type=click.Choice(BACKENDS),
    help="Repeatable; default all that run on this platform.",
)
@click.option(
    "--connections", metavar="C,C,...", default=None, help="Echo loads (default 1,50,1000)."
)
@click.option("--quick", is_flag=True, help="About a minute instead of about five.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--plot", metavar="FILE.png", default=None, help="Also write a PNG (needs the 'plot' extra)."
)
def bench_backends_command(
    names: tuple[str, ...], connections: str | None, quick: bool, as_json: bool, plot: str | None
) -> None:
    """Measure the seed's I/O-multiplexing table for every backend."""
    plan = BackendsPlan.quick() if quick else BackendsPlan()
    if connections is not None:
        try:
            plan = attrs.evolve(
                plan, echo_connections=tuple(int(c) for c in connections.split(","))
            )
        except ValueError:
            raise click.BadParameter(
                "expected comma-separated counts, e.g. 1,50,1000", param_hint="'--connections'"
            ) from None
    for name in names:
        _require_backend(name)
    try:
        bench_backends(
            names or available_backends(), plan, as_json=as_json, plot=plot, out=sys.stdout
        )
    except (BenchError, RuntimeError) as exc:
        _fail(str(exc))


@bench.command("threads-vs-tasks")
@click.option(
    "--connections",
    metavar="N,N,...",
    default="1000,10000",
    show_default=True,
    help="Connection counts.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--plot", metavar="FILE.png", default=None, help="Also write a PNG (needs the 'plot' extra)."
)
def bench_threads_vs_tasks_command(connections: str, as_json: bool, plot: str | None) -> None:
    """Memory per idle connection, time to open N, switch cost: threads vs trio tasks."""
    try:
        counts = [int(c) for c in connections.split(",")]
    except ValueError:
        raise click.BadParameter(
            "expected comma-separated counts", param_hint="'--connections'"
        ) from None
    try:
        bench_threads_vs_tasks(counts=counts, as_json=as_json, plot=plot, out=sys.stdout)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--connections'") from None
    except (BenchError, RuntimeError) as exc:
        _fail(str(exc))


@bench.command("reload")
@click.option("--reloads", type=IntRange(1, 10_000), default=50, show_default=True, help="SIGHUPs.")
@click.option(
    "--interval",
    type=FloatRange(0, 60),
    default=0.5,
    show_default=True,
    help="Seconds between one reload's end and the next SIGHUP.",
)
@click.option(
    "--concurrency",
    type=IntRange(1, 1000),
    default=8,
    show_default=True,
    help="Clients looping connect, echo, close.",
)
@click.option(
    "--streams",
    type=IntRange(0, 1000),
    default=4,
    show_default=True,
    help="Long-lived streaming connections at once (each replaced after --stream-lifetime).",
)
@click.option(
    "--stream-lifetime",
    type=FloatRange(0, 3600, min_open=True),
    default=2.0,
    show_default=True,
    help="Seconds each stream lives (keep it under --grace).",
)
@click.option(
    "--workers", type=IntRange(min=1), default=None, help="Run the server with --workers N."
)
@click.option("--backend", type=click.Choice(SERVER_BACKENDS), default="trio", show_default=True)
@click.option(
    "--grace",
    type=FloatRange(0, 3600, min_open=True),
    default=120.0,
    show_default=True,
    help="The server's --grace (the first stream lives through the run, up to 0.9 of it).",
)
def bench_reload_command(**opts: Any) -> None:
    """Reload an echo server K times under a churn of connections and count every loss.

    Exits 0 when no connect failed, was reset or got a wrong echo, no stream was cut
    and every reload succeeded; 1 otherwise.
    """
    _require_backend(opts["backend"])
    plan = ReloadPlan(**opts)
    if plan.stream_lifetime >= plan.grace:
        raise click.BadParameter("must be less than --grace", param_hint="'--stream-lifetime'")
    try:
        ok = bench_reload(plan, out=sys.stdout)
    except BenchError as exc:
        _fail(str(exc))
    sys.exit(0 if ok else 1)


@bench.command("cpu")
@click.option(
    "--work-ms",
    type=FloatRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="CPU per request.",
)
@click.option("--clients", type=IntRange(min=1), default=4, show_default=True)
@click.option(
    "--duration",
    type=FloatRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="Seconds per mode.",
)
@click.option("--warmup", type=FloatRange(min=0), default=0.5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def bench_cpu_command(**opts: Any) -> None:
    """CPU-bound work inline, in a thread, in processes, while a canary echoes."""
    try:
        bench_cpu(out=sys.stdout, **opts)
    except BenchError as exc:
        _fail(str(exc))
