from __future__ import annotations

import attrs
import pytest

import triosrv
from triosrv import ConfigError, Limits, ServerConfig, Timeouts, parse_bind


def test_config_defaults() -> None:
    config = ServerConfig()
    assert config.binds == ("127.0.0.1:8888",)
    assert config.backlog is None
    assert config.timeouts == Timeouts(idle=60.0, write=60.0, lifetime=None, handshake=10.0)
    assert config.timeouts.grace == 10.0
    assert config.limits == Limits(max_connections=1000, overload="wait", recv_size=65536)
    assert config.handler_errors == "log"
    assert config.unix_mode == 0o600


def test_config_is_frozen_and_keyword_only() -> None:
    config = ServerConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.backlog = 5  # type: ignore[misc]  # the point of the test
    with pytest.raises(TypeError):
        Timeouts(1.0)  # type: ignore[misc]  # positional on purpose


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Timeouts(idle=0), "idle"),
        (lambda: Timeouts(write=-1), "write"),
        (lambda: Timeouts(lifetime=float("nan")), "lifetime"),
        (lambda: Timeouts(handshake="5"), "handshake"),
        (lambda: Timeouts(grace=float("inf")), "grace"),
        (lambda: Limits(max_connections=0), "max_connections"),
        (lambda: Limits(overload="drop"), "overload"),
        (lambda: Limits(recv_size=0), "recv_size"),
        (lambda: Limits(recv_size=True), "recv_size"),
        (lambda: ServerConfig(handler_errors="ignore"), "handler_errors"),
        (lambda: ServerConfig(backlog=0), "backlog"),
        (lambda: ServerConfig(binds=["nonsense"]), "binds"),
        (lambda: ServerConfig(binds=["a:1", "a:1"]), "binds"),
        (lambda: ServerConfig(unix_mode=0o1777), "unix_mode"),
        (lambda: ServerConfig(timeouts=5), "timeouts"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(build: object, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: expected|^{field}: "):
        build()  # type: ignore[operator]


def test_config_none_disables_a_timeout() -> None:
    assert Timeouts(idle=None).idle is None


def test_config_binds_accept_a_single_string_and_lists() -> None:
    assert ServerConfig(binds="127.0.0.1:0").binds == ("127.0.0.1:0",)
    assert ServerConfig(binds=["127.0.0.1:0", "unix:/tmp/x"]).binds[1] == "unix:/tmp/x"
    assert ServerConfig(binds=()).binds == ()


def test_config_evolve_validates() -> None:
    with pytest.raises(ConfigError):
        attrs.evolve(ServerConfig(), handler_errors="nope")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8888", triosrv.BindSpec("tcp", host="127.0.0.1", port=8888)),
        ("localhost:0", triosrv.BindSpec("tcp", host="localhost", port=0)),
        ("[::1]:80", triosrv.BindSpec("tcp", host="::1", port=80)),
        ("[::]:0", triosrv.BindSpec("tcp", host="::", port=0)),
        ("unix:/run/x.sock", triosrv.BindSpec("unix", path="/run/x.sock")),
    ],
)
def test_parse_bind_accepts_the_three_forms(text: str, expected: triosrv.BindSpec) -> None:
    assert parse_bind(text) == expected
    assert str(parse_bind(text)) == text.removeprefix("")


@pytest.mark.parametrize(
    "text", ["", "8888", "host:", ":80", "h:99999", "h:-1", "[::1]80", "[zz]:80", "::1:80", "unix:"]
)
def test_parse_bind_rejects_malformed(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^binds: "):
        parse_bind(text)
