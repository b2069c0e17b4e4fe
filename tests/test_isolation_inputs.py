"""Input surfaces an operator or a peer controls, fuzzed: CLI option values, control
requests, metrics requests, PROXY headers; and the signals an operator sends.

Each attack ends by checking that the server still serves (an earlier connection
still echoes, or the endpoint still answers a well-formed request)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import triosrv
from triosrv._cli import main
from triosrv._options import OPTIONS
from triosrv.diagnostics import serve_metrics
from triosrv.diagnostics._control import ControlEndpoint
from triosrv.protocols import parse_proxy_header
from triosrv.protocols._proxy import PROXY_V2_SIGNATURE

from .helpers import connect, listen_process, running_server
from .test_isolation import assert_still_echoes

LISTEN = [sys.executable, "-m", "triosrv", "listen", "--port", "0"]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_listen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LISTEN, *args], capture_output=True, text=True, timeout=60, check=False)


# -- operator input: one line, the right exit code ----------------------------------


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--bind", "127.0.0.1:\u00b2"], 2, "port must be 0..65535"),
        (["--bind", "127.0.0.1:\u0668\u0668"], 2, "port must be 0..65535"),
        (["--workers", "99999999999999999999"], 2, "--workers"),
        (["--control", ""], 2, "control"),
        (["--proxy-protocol", "v1", "--proxy-allow-from", "1.2.3.4/8"], 2, "host bits"),
        (["--bind", "unix:/" + "d" * 300 + "/s.sock"], 2, "at most 107"),
        (["--bind", "unix:/etc/hostname/x.sock"], 1, "cannot bind unix:/etc/hostname/x.sock"),
        (["--control", "/etc/hostname/x.sock"], 1, "cannot bind unix:/etc/hostname/x.sock"),
    ],
)
def test_inputs_bad_operator_input_is_one_line(args: list[str], code: int, says: str) -> None:
    result = run_listen(*args)
    assert result.returncode == code, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1, result.stderr


def test_inputs_certfile_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "cert.pem"
    os.mkfifo(fifo)
    result = run_listen("--certfile", str(fifo))
    assert result.returncode == 2
    assert "not a regular file" in result.stderr and "Traceback" not in result.stderr


# Options whose value names something to import or read: fuzzed apart (a random
# module name could import anything; a random path could name a huge file).
_NOT_FUZZED = {"handler", "config"}
FUZZED_OPTIONS = sorted(key for key in OPTIONS if key not in _NOT_FUZZED)
option_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=30,
) | st.sampled_from(["0", "-1", "1e999", "nan", "none", "inf", "99999999999999999999"])


@FUZZ
@given(st.sampled_from(FUZZED_OPTIONS), option_values)
def test_inputs_any_option_value_exits_0_or_2_never_a_traceback(key: str, value: str) -> None:
    # --check-config checks everything and binds nothing.
    param = next(p for p in main.commands["listen"].params if p.opts[0] == f"--{key}")
    args = [f"--{key}"] if getattr(param, "is_flag", False) else [f"--{key}", value]
    result = CliRunner().invoke(main, ["listen", *args, "--check-config"])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


@FUZZ
@given(st.text(max_size=40))
def test_inputs_any_handler_name_exits_0_or_2(name: str) -> None:
    name = f"nosuchmodule_{name}"  # never imports a real module with side effects
    result = CliRunner().invoke(main, ["listen", "--handler", name, "--check-config"])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)


# -- signals: every signal an operator commonly sends drains or is logged -------------


# (SIGHUP reloads since the reload landed: tests/test_reload.py.)
@pytest.mark.parametrize("signum", [signal.SIGQUIT])
async def test_inputs_quit_drains_gracefully(signum: signal.Signals) -> None:
    async with listen_process("--grace", "5") as server:
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as held:
            await assert_still_echoes(held)
            server.process.send_signal(signum)
            await server.read_log_until(b"shutting down")
            await assert_still_echoes(held)  # drained, not dropped
        assert await server.wait_exit(10) == 0
    assert signum.name.encode() in server.log
    assert b"1 connection(s) finished within grace, 0 cancelled" in server.log


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2])
async def test_inputs_usr_signals_log_statistics_and_change_nothing(
    signum: signal.Signals,
) -> None:
    async with listen_process() as server:
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as held:
            await assert_still_echoes(held)
            server.process.send_signal(signum)
            await server.read_log_until(f"{signum.name}: serving, 1 active".encode())
            await assert_still_echoes(held)
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0


_RT = getattr(signal, "SIGRTMIN", None)


@pytest.mark.parametrize(
    "signum",
    [signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGIO, signal.SIGXFSZ]
    + ([_RT, _RT + 3] if _RT is not None else []),
)
async def test_inputs_stray_signals_are_logged_and_ignored(signum: int) -> None:
    # Each of these ends a process by default; a server logs one line and serves on.
    async with listen_process("--grace", "5") as server:
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as held:
            await assert_still_echoes(held)
            server.process.send_signal(signum)
            await server.read_log_until(b"ignored (SIGTERM, SIGINT or SIGQUIT stop the server)")
            await assert_still_echoes(held)
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0


async def test_inputs_sigxcpu_drains_gracefully() -> None:
    # The soft CPU-time limit: drained now rather than killed by the hard limit later.
    async with listen_process("--grace", "5") as server:
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as held:
            await assert_still_echoes(held)
            server.process.send_signal(signal.SIGXCPU)
            await server.read_log_until(b"SIGXCPU: shutting down")
            await assert_still_echoes(held)  # drained, not dropped
        assert await server.wait_exit(10) == 0


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]])
async def test_inputs_signals_while_exiting_do_not_change_the_exit_status(
    workers: list[str],
) -> None:
    # SIGTERM, then a signal every millisecond until the process is gone: those that
    # come after the drain finished (while the process exits) used to end it with
    # their default action (exit -SIGUSR1) instead of the drain's 0.
    async with listen_process("--grace", "0.2", *workers) as server:
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            while server.process.poll() is None:
                try:
                    server.process.send_signal(signal.SIGUSR1)
                except ProcessLookupError:  # pragma: no cover - gone between the checks
                    break
                await trio.sleep(0.001)  # real time: a signal per millisecond, bounded
        assert await server.wait_exit(10) == 0


# -- the control endpoint: any line gets one JSON answer ----------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
control_lines = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"cmd": st.sampled_from(["status", "drain", "x", ""])},
        optional={"offset": json_values, "limit": json_values, "grace": json_values},
    ).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")),
)


@FUZZ
@given(st.lists(control_lines, min_size=1, max_size=10))
def test_inputs_any_control_request_gets_one_json_answer(lines: list[bytes]) -> None:
    async def main_() -> None:
        async with running_server(binds=()) as server:
            client, served = trio.testing.memory_stream_pair()
            await server.add_stream(served)
            endpoint = ControlEndpoint(server)
            for line in lines:
                encoded, after = await endpoint.answer(line)
                assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
                assert isinstance(json.loads(encoded), dict)
                assert after is None or b'"ok":true' in encoded
            # Nothing above started a drain (after() was not called): still serving.
            await client.send_all(b"ping")
            assert await client.receive_some() == b"ping"
            await client.aclose()

    trio.run(main_)


# -- the metrics endpoint: any request, the server goes on --------------------------

header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40
) | st.sampled_from(
    ["text/plain; version=x", "application/openmetrics-text; version=1.0.0-rc1", "*/*"]
)
http_requests = st.one_of(
    st.builds(
        lambda method, target, headers, body: (
            f"{method} {target} HTTP/1.1\r\nhost: x\r\n".encode("latin-1")
            + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        ),
        st.sampled_from(["GET", "HEAD", "POST", "PUT", "BREW", "get"]),
        st.sampled_from(["/metrics", "/", "/metrics?x=1", "*", "/%00", "http://x/metrics"]),
        st.lists(st.tuples(st.just("accept") | header_names, header_values), max_size=4),
        st.binary(max_size=64),
    ),
    st.binary(max_size=300),
)


@FUZZ
@given(st.lists(http_requests, min_size=1, max_size=5))
def test_inputs_any_metrics_request_leaves_the_server_serving(requests: list[bytes]) -> None:
    async def main_() -> None:
        async with running_server() as server, trio.open_nursery() as nursery:
            url = await nursery.start(serve_metrics, server, "127.0.0.1:0")
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            async with await connect(server) as earlier:
                for request in requests:
                    async with await trio.open_tcp_stream("127.0.0.1", port) as scraper:
                        await scraper.send_all(request)
                        await scraper.send_eof()
                        with trio.fail_after(5):
                            while await scraper.receive_some():
                                pass
                async with await trio.open_tcp_stream("127.0.0.1", port) as scraper:
                    await scraper.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
                    with trio.fail_after(5):
                        assert (await scraper.receive_some()).startswith(b"HTTP/1.1 200 ")
                await assert_still_echoes(earlier)
            nursery.cancel_scope.cancel()

    trio.run(main_)


# -- PROXY headers: unix addresses cannot smuggle control characters ----------------


def _v2_unix(source: bytes, destination: bytes, tlvs: bytes = b"") -> bytes:
    body = source.ljust(108, b"\x00")[:108] + destination.ljust(108, b"\x00")[:108] + tlvs
    return PROXY_V2_SIGNATURE + b"\x21\x31" + len(body).to_bytes(2, "big") + body


@FUZZ
@given(st.binary(max_size=108), st.binary(max_size=108), st.binary(max_size=40))
def test_inputs_proxy_v2_unix_paths_are_printable(src: bytes, dst: bytes, tlvs: bytes) -> None:
    from triosrv.protocols import ProxyProtocolError

    try:
        header = parse_proxy_header(_v2_unix(src, dst, tlvs), "v2")
    except ProxyProtocolError:
        return  # malformed TLVs: refused, which is fine
    assert header is not None and header.source is not None and header.destination is not None
    for path, _port in (header.source, header.destination):
        assert path.isprintable()
        path.encode("utf-8")  # no lone surrogates


async def test_inputs_proxy_v2_unix_header_cannot_forge_log_lines() -> None:
    async with running_server(proxy_protocol="v2") as server, await connect(server) as client:
        await client.send_all(_v2_unix(b"/a", b"/run/x\r\n\x1b[31mFAKE\xed\xb3\xbf\xff"))
        await assert_still_echoes(client)
        [conn] = server.connections()
        assert conn.local.isprintable() and "\r" not in conn.local


async def test_inputs_preamble_failure_ends_only_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from triosrv import _preamble

    def broken(data: bytes, versions: str = "auto") -> None:
        if b"boom" in data:
            raise RuntimeError("planted failure")
        return None

    async with running_server(proxy_protocol="v1") as server:
        async with await connect(server) as earlier:
            await earlier.send_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
            await assert_still_echoes(earlier)
            monkeypatch.setattr(_preamble, "parse_proxy_header", broken)
            async with await connect(server) as bad:
                await bad.send_all(b"boom")
                with trio.fail_after(5):
                    try:
                        assert await bad.receive_some() == b""
                    except trio.BrokenResourceError:
                        pass  # closed with "boom" unread: a reset, as closed as it gets
            await assert_still_echoes(earlier)
        assert server.statistics().handshake_failures["error"] == 1
        assert server.state == "serving"


def test_inputs_listen_options_table_matches_the_cli() -> None:
    # The fuzz above covers every option: a new option of listen is a new key here.
    cli = {p.opts[0].removeprefix("--") for p in main.commands["listen"].params}
    assert set(OPTIONS) <= cli
    assert triosrv.ServerConfig  # the options build this


async def test_inputs_status_cli_pages_through_connections() -> None:
    from .diag_helpers import live_server, triosrv_json

    async with live_server() as server:
        clients = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(5)]
        for client in clients:
            await assert_still_echoes(client)
        doc = await triosrv_json(
            "status", "--control", server.control, "--offset", "1", "--limit", "2"
        )
        assert doc["connections_total"] == 5 and doc["connections_offset"] == 1
        assert len(doc["connections"]) == 2
        for client in clients:
            await client.aclose()
