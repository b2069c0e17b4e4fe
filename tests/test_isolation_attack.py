"""Attacks on the isolation rule (triosrv/_isolation.py) found after its fixes landed:
each test is one way in which a handler, a peer or an operator could end or stall the
server. Every attack test ends by checking that a connection opened before it still
echoes."""

from __future__ import annotations

import functools
import json
import socket
import threading
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import triosrv
from triosrv._cli import main
from triosrv._config import BACKENDS
from triosrv.protocols import Echo

from .helpers import connect, listen_process, receive_until_eof, running_server
from .test_isolation import assert_still_echoes
from .test_isolation_inputs import run_listen

# -- handlers that raise a Cancelled no scope will catch -----------------------------


async def kept_cancelled() -> trio.Cancelled:
    """A real ``trio.Cancelled``, caught from a cancelled inner scope and kept: raised
    later, outside that scope, nothing is cancelled and no scope catches it."""
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            return exc
    raise AssertionError("the cancelled scope did not cancel")


class KeptCancelledProtocol(Echo):
    """Echo that raises ``KEPT`` (a kept Cancelled) on b"boom"."""

    __slots__ = ()
    KEPT: BaseException | None = None

    def receive_data(self, data: bytes) -> None:
        if data == b"boom" and KeptCancelledProtocol.KEPT is not None:
            raise KeptCancelledProtocol.KEPT
        super().receive_data(data)

    def answer(self, data: bytes, max_bytes: int) -> bytes | None:
        return None if data == b"boom" else super().answer(data, max_bytes)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_attack_protocol_raising_a_kept_cancelled_ends_only_its_connection(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(KeptCancelledProtocol, "KEPT", await kept_cancelled())
    handler = triosrv.protocol_handler(KeptCancelledProtocol)
    async with running_server(handler, backend=backend) as server:
        async with await connect(server) as earlier:
            await assert_still_echoes(earlier)
            async with await connect(server) as bad:
                await bad.send_all(b"boom")
                assert await receive_until_eof(bad) == b""
            await assert_still_echoes(earlier)
        assert server.statistics().handler_errors == 1
        assert server.state == "serving"


@pytest.mark.parametrize("grouped", [False, True])
async def test_attack_async_handler_raising_a_kept_cancelled_is_a_handler_error(
    grouped: bool,
) -> None:
    kept = await kept_cancelled()

    async def handler(conn: triosrv.Connection) -> None:
        async for chunk in conn:
            if chunk == b"boom":
                if grouped:
                    raise BaseExceptionGroup("planted", [kept, ValueError("planted")])
                raise kept
            await conn.send_all(chunk)

    async with running_server(handler) as server:
        async with await connect(server) as earlier:
            async with await connect(server) as bad:
                await bad.send_all(b"boom")
                assert await receive_until_eof(bad) == b""
            await assert_still_echoes(earlier)
        assert server.statistics().handler_errors == 1
        assert server.state == "serving"


# -- triosrv status against whatever listens on the socket ---------------------------

FAKE_ANSWERS = {
    "not UTF-8": b"\xb1\xdd\xff{}\n",
    "nested too deeply": b"[" * 100_000 + b"\n",
    "integer of 5000 digits": b'{"pid": ' + b"9" * 5000 + b"}\n",
    "not a status": b'{"version": 1, "connections": "x", "tasks": 5}\n',
}


def serve_one_answer(path: str, answer: bytes) -> threading.Thread:
    """A stranger on the control socket: answers one request with ``answer``."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    listener.settimeout(30)

    def run() -> None:
        with listener:
            client, _ = listener.accept()
            with client:
                client.recv(65536)
                client.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("args", [[], ["--json"], ["--drain"], ["--reload"]])
@pytest.mark.parametrize("answer", list(FAKE_ANSWERS), ids=list(FAKE_ANSWERS))
def test_attack_status_against_a_stranger_is_one_line(
    answer: str, args: list[str], tmp_path: Path
) -> None:
    path = str(tmp_path / "c.sock")
    thread = serve_one_answer(path, FAKE_ANSWERS[answer])
    result = CliRunner().invoke(main, ["status", "--control", path, *args])
    thread.join(timeout=10)
    if answer == "not a status" and args == ["--json"]:
        assert result.exit_code == 0  # valid JSON, printed as it is
        return
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.startswith("error: the answer")
    assert result.output.count("\n") == 1


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@functools.cache
def real_status() -> str:
    """The JSON status document of a server with one connection."""
    from triosrv.diagnostics import status_document

    async def build() -> str:
        async with running_server() as server, await connect(server) as client:
            await assert_still_echoes(client)
            doc = status_document(server, started_at=0, started_wall=0)
            return json.dumps(doc)

    return trio.run(build)


def json_paths(doc: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every path (keys and indexes) into ``doc``."""
    paths = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths += json_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            paths += json_paths(value, (*prefix, index))
    return paths


@settings(max_examples=100, deadline=None)
@given(data=st.data(), value=JSON_VALUES)
def test_attack_status_renders_any_json_object_or_says_it_cannot(
    data: st.DataObject, value: object
) -> None:
    from triosrv._cli import _drain_text, _render
    from triosrv.diagnostics._status import render_status

    doc = json.loads(real_status())
    # One field of a real answer replaced by any JSON value (or deleted).
    path = data.draw(st.sampled_from(json_paths(doc)[1:]))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    for render in (render_status, _drain_text):
        try:
            assert isinstance(_render(render, doc), str)
        except SystemExit as exc:
            assert exc.code == 1


# -- operator input: config files and --check-config ---------------------------------


@pytest.mark.parametrize("depth", [600, 5000])
def test_attack_config_nested_too_deeply_is_one_line(depth: int, tmp_path: Path) -> None:
    config = tmp_path / "deep.toml"
    config.write_text("port = " + "[" * depth + "]" * depth + "\n")
    result = run_listen("--config", str(config), "--check-config")
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {config}: not valid TOML: nested too deeply\n"


@pytest.mark.parametrize("metrics", ["127.0.0.1:99999", "[::1]:x", "unix:/tmp/m.sock"])
def test_attack_check_config_refuses_what_listen_refuses(metrics: str, tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text(f'metrics = "{metrics}"\n')
    checked = CliRunner().invoke(main, ["listen", "--config", str(config), "--check-config"])
    assert checked.exit_code == 2, checked.output
    assert "--metrics" in checked.output and "Traceback" not in checked.output


# -- the metrics endpoint: what an HTTP client may send ------------------------------


@pytest.mark.parametrize(
    "target",
    [b"http://127.0.0.1/metrics", b"HTTP://localhost:9100/metrics?name[]=x", b"/metrics"],
)
async def test_attack_metrics_serves_absolute_form_targets(target: bytes) -> None:
    from triosrv.diagnostics import serve_metrics

    async with running_server() as server, trio.open_nursery() as nursery:
        url = await nursery.start(serve_metrics, server, "127.0.0.1:0")
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        async with await connect(server) as earlier:
            async with await trio.open_tcp_stream("127.0.0.1", port) as scraper:
                await scraper.send_all(
                    b"GET " + target + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                )
                reply = await receive_until_eof(scraper)
            assert reply.startswith(b"HTTP/1.1 200 "), reply[:100]
            assert b"triosrv_state" in reply
            await assert_still_echoes(earlier)
        nursery.cancel_scope.cancel()


@settings(max_examples=200, deadline=None)
@given(target=st.binary(max_size=80))
def test_attack_metrics_request_path_of_any_target(target: bytes) -> None:
    from triosrv.diagnostics._metrics import _request_path

    path = _request_path(target)
    assert isinstance(path, bytes) and len(path) <= len(target) + 1
    assert b"?" not in path
    if target.startswith(b"/"):
        assert target.startswith(path)


# -- operator input: numbers are ASCII digits -----------------------------------------

NON_ASCII_NUMBERS = ["\u0668\u0668\u0668\u0668", "\uff18\uff18\uff18\uff18", "8_888", "\u0663"]


@pytest.mark.parametrize("value", NON_ASCII_NUMBERS)
@pytest.mark.parametrize(
    "option",
    ["--port", "--workers", "--max-connections", "--backlog", "--recv-size", "--idle-timeout",
     "--grace", "--min-receive-rate", "--nonblocking-interval"],
)  # fmt: skip
def test_attack_listen_numbers_take_ascii_digits_only(option: str, value: str) -> None:
    result = CliRunner().invoke(main, ["listen", "--check-config", option, value])
    assert result.exit_code == 2, result.output
    assert "ASCII digits" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--control", "/nonexistent.sock", "--offset", "\u0663"],
        ["status", "--control", "/nonexistent.sock", "--limit", "1_0"],
        ["status", "--control", "/nonexistent.sock", "--drain", "--grace", "nan"],
        ["listen", "--check-config", "--nonblocking-interval", "nan"],
        ["listen", "--check-config", "--min-receive-rate-window", "inf"],
        ["diag", "fds", "--pid", "\u0661"],
    ],
)
def test_attack_cli_numbers_refuse_non_ascii_and_non_finite(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output and "Traceback" not in result.output


NUMBERISH = st.characters(categories=["Nd"]) | st.sampled_from("_.-+ e")


@settings(max_examples=80, deadline=None)
@given(value=st.text(alphabet=NUMBERISH, max_size=8))
def test_attack_port_is_a_number_only_in_ascii_digits(value: str) -> None:
    result = CliRunner().invoke(main, ["listen", "--check-config", "--port", value])
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 0:
        digits = value.strip()
        assert digits.isascii() and digits.isdigit() and int(digits) <= 65535


# -- operator input: host names the IDNA codec refuses --------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--host", "x" * 64],
        ["--bind", "a..b:0"],
        ["--host", "x" * 100_000],
        ["--metrics", "y" * 70 + ":9100"],
    ],
    ids=["label-64", "empty-label", "huge", "metrics"],
)
def test_attack_listen_invalid_host_name_is_one_line(args: list[str]) -> None:
    result = run_listen(*args)
    assert result.returncode == 2, result.stderr
    assert "is not a valid host name" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr) < 1000


def test_attack_resolving_an_invalid_host_name_is_a_bind_error() -> None:
    from triosrv import BindError
    from triosrv._config import BindSpec
    from triosrv._listeners import _resolve

    with pytest.raises(BindError, match="not a valid host name"):
        _resolve(BindSpec("tcp", host="x" * 64, port=0))


# -- a control drain's grace reaches --workers ------------------------------------------


async def test_attack_control_drain_grace_reaches_workers(tmp_path: Path) -> None:
    from triosrv.diagnostics import control_request

    control = str(tmp_path / "c.sock")
    args = ("--workers", "2", "--grace", "30", "--control", control)
    async with listen_process(*args, ready=b"all 2 workers ready") as server:
        address = server.logged_value(b"2 workers on ").split()[0]  # tcp://HOST:PORT
        port = int(address.rsplit(":", 1)[1])
        async with await trio.open_tcp_stream("127.0.0.1", port) as earlier:
            await assert_still_echoes(earlier)
            answer = await control_request(control, {"cmd": "drain", "grace": 0.5})
            assert answer["grace"] == 0.5
            # Real time, a subprocess: the connection ends after the drain's 0.5 s,
            # not the workers' own 30 s, and not by SIGKILL 5 s later.
            with trio.fail_after(4):
                assert await receive_until_eof(earlier, timeout=4) == b""
        assert await server.wait_exit(timeout=10) == 0
    assert b"did not stop in time" not in server.log
    assert b"Traceback" not in server.log
