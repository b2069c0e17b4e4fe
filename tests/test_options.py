"""`listen`'s options as data: the TOML config file, effective options, --check-config."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import triosrv
from triosrv._cli import listen
from triosrv._options import (
    DEFAULTS,
    OPTIONS,
    check_options,
    effective_options,
    format_options,
    load_listen,
    read_config_file,
    server_config,
)

from .helpers import listen_process

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "triosrv.toml"
    path.write_text(text)
    return str(path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triosrv", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=ROOT,
    )


def test_options_every_listen_option_has_a_key_and_the_same_default() -> None:
    keys = {}
    with listen.make_context("listen", []) as ctx:
        for param in listen.params:
            if isinstance(param, click.Option) and param.name not in ("config", "check_config"):
                keys[param.opts[0].removeprefix("--")] = ctx.params[param.name]
    assert set(keys) == set(OPTIONS)
    for key, default in keys.items():
        expected = DEFAULTS[key]
        assert default == expected, key


def test_options_file_values_are_converted_and_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'idle-timeout = 30\ngrace = "none"\nbind = "127.0.0.1:0"\nworkers = 2\n'
        'reuse-port = true\nproxy-allow-from = ["10.0.0.0/8", "::1/128"]\n',
    )
    options = read_config_file(path)
    assert options == {
        "idle-timeout": 30.0,
        "grace": None,
        "bind": ("127.0.0.1:0",),
        "workers": 2,
        "reuse-port": True,
        "proxy-allow-from": "10.0.0.0/8,::1/128",
    }
    config = server_config(options)
    assert config.timeouts.idle == 30.0 and config.timeouts.grace is None
    assert config.binds == ("127.0.0.1:0",)
    assert config.proxy_allow_from == ("10.0.0.0/8", "::1/128")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("idle_timeout = 3", r"idle_timeout: unknown option \(did you mean 'idle-timeout'\?\)"),
        ("nonsense = 1", "nonsense: unknown option"),
        ("idle-timeout = -1", "idle-timeout: expected a positive number of seconds"),
        ("max-connections = 0", "max-connections: expected an integer >= 1"),
        ("max-connections = true", "max-connections: expected an integer"),
        ('backend = "kqueue"', "backend: expected one of trio, "),
        ("port = 70000", r"port: expected an integer 0\.\.65535"),
        ('bind = ["nowhere"]', "bind: expected HOST:PORT"),
        ("reuse-port = 1", "reuse-port: expected true or false"),
        ("[listen]\nport = 1", "listen: unknown option"),
        ("idle-timeout = ", "not valid TOML"),
    ],
)
def test_options_bad_file_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(triosrv.ConfigError, match=f"^{path}: {message}"):
        read_config_file(path)


def test_options_command_line_overrides_file_and_addresses_as_a_group(tmp_path: Path) -> None:
    path = write(tmp_path, 'idle-timeout = 30\ngrace = 3\nbind = ["127.0.0.1:7001"]\n')
    options = effective_options({"grace": 5.0, "port": 0}, config_file=path)
    assert options["idle-timeout"] == 30.0 and options["grace"] == 5.0
    # --port replaces the file's bind instead of adding a second address.
    assert server_config(options).binds == ("127.0.0.1:0",)
    assert server_config(effective_options({}, config_file=path)).binds == ("127.0.0.1:7001",)


def test_options_load_listen_reports_handler_and_cross_field_errors() -> None:
    with pytest.raises(triosrv.ConfigError, match=r"^handler: cannot import 'tests._nope'"):
        load_listen({"handler": "tests._nope:x"})
    with pytest.raises(triosrv.ConfigError, match=r"^keyfile: needs"):
        load_listen({"keyfile": "/k.pem"})
    with pytest.raises(triosrv.ConfigError, match=r"^backend: 'epoll' drives sans-IO"):
        load_listen({"backend": "epoll", "handler": "tests._pid_handler:pid_handler"})


def test_options_format_is_a_config_file_that_means_the_same(tmp_path: Path) -> None:
    options = effective_options({"grace": None, "bind": ("127.0.0.1:0", "unix:/tmp/x s")})
    text = format_options(options)
    again = effective_options({}, config_file=write(tmp_path, text))
    assert again == options


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.lists(st.text(max_size=10), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*OPTIONS, "idle_timeout", "x"]), _VALUES, max_size=4))
def test_options_fuzz_checked_or_one_line_error(options: dict[str, object]) -> None:
    try:
        checked = check_options(options)
        server_config(checked)
    except triosrv.ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.split(":", 1)[0].lstrip("-") in {*options, "bind"}
    else:
        assert set(checked) == set(options)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_options_fuzz_file_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("toml") / "f.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        read_config_file(str(path))
    except triosrv.ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{path}: ")
    else:
        assert set(tomllib.loads(text)) <= set(OPTIONS)


# -- the command line ------------------------------------------------------------------


def test_options_check_config_prints_the_effective_options(tmp_path: Path) -> None:
    path = write(tmp_path, 'idle-timeout = 30\nbind = ["127.0.0.1:0"]\n')
    result = run_cli("listen", "--config", path, "--check-config", "--grace", "none")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# triosrv listen: the configuration is valid")
    assert "idle-timeout = 30.0" in lines and 'grace = "none"' in lines
    assert 'bind = ["127.0.0.1:0"]' in lines


def test_options_check_config_unknown_key_is_one_line_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "idle-timout = 30\n")
    result = run_cli("listen", "--config", path, "--check-config")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {path}: idle-timout: unknown option (did you mean 'idle-timeout'?)"
    ]
    assert result.stdout == ""


async def test_options_listen_serves_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'handler = "tests._pid_handler:pid_handler"\nidle-timeout = 7\n')
    async with listen_process("--config", path) as server:
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            with trio.fail_after(10):
                reply = await stream.receive_some(100)
        assert int(reply) == server.process.pid
