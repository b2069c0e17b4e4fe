"""What a chaos run is told: the target, the scenarios, their sizes; validated, no I/O.

The target check lives here too: a chaos run floods and resets whatever it is pointed
at, so by default it only accepts addresses that resolve to loopback.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from typing import Any, Literal

import attrs

SCENARIO_NAMES = (
    "slowloris",
    "slow-reader",
    "flood",
    "reset-mid-read",
    "reset-mid-write",
    "half-close",
    "garbage",
    "oversize",
    "idle",
    "churn",
)
EXPECT_MODES = ("echo", "any")


class TargetError(ValueError):
    """The target cannot be attacked: unparsable, unresolvable, or not loopback."""


@attrs.frozen
class Target:
    """A resolved TCP target: what to ``connect()`` to, and how to print it."""

    host: str
    port: int
    family: int
    sockaddr: tuple[Any, ...]

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(text: str, *, allow_non_loopback: bool = False) -> Target:
    """Parse and resolve ``HOST:PORT`` or ``[V6ADDR]:PORT``.

    Every address the host resolves to must be loopback unless ``allow_non_loopback``.
    Raises :class:`TargetError` with a one-line reason.
    """
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise TargetError(f"expected HOST:PORT or [V6ADDR]:PORT with a port 1..65535, got {text!r}")
    port = int(port_text)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetError(f"cannot resolve {host!r}: {exc.strerror}") from None
    if not allow_non_loopback:
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if not address.is_loopback:
                raise TargetError(
                    f"{text} resolves to {address}, which is not loopback; "
                    "pass --allow-non-loopback to attack it anyway"
                )
    family, _type, _proto, _name, sockaddr = infos[0]
    return Target(host=host, port=port, family=family, sockaddr=tuple(sockaddr))


def _positive(kind: type, *, allow_zero: bool = False) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        kinds = (int, float) if kind is float else (kind,)  # an int is fine for seconds
        ok = isinstance(value, kinds) and not isinstance(value, bool)
        if ok and isinstance(value, float):
            ok = math.isfinite(value)
        if not ok or (value < 0 if allow_zero else value <= 0):  # type: ignore[operator]
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{attribute.name}: expected a {kind.__name__} {bound}, got {value!r}")

    return check


def _to_scenarios(value: Any) -> tuple[str, ...]:
    return tuple(value) if value else SCENARIO_NAMES


def _check_scenarios(_inst: object, _attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for name in value:
        if name not in SCENARIO_NAMES:
            raise ValueError(f"scenario: expected one of {', '.join(SCENARIO_NAMES)}, got {name!r}")


def _check_expect(_inst: object, _attr: attrs.Attribute[Any], value: object) -> None:
    if value not in EXPECT_MODES:
        raise ValueError(f"expect: expected one of {', '.join(EXPECT_MODES)}, got {value!r}")


@attrs.frozen(kw_only=True)
class ChaosConfig:
    """How hard and how long to attack; every field has a unit in its name or docs.

    - ``duration``: seconds each attack lasts (oversize may take up to
      ``oversize_time``; every attack is cut at ``duration + ATTACK_SLACK``).
    - ``quiet``: seconds of canary-only traffic before each attack (the baseline).
    - ``expect``: ``"echo"`` checks every reply byte for byte; ``"any"`` only needs the
      server to answer or close, for targets that are not echo servers.
    - ``connections``: connections held at once by slowloris, slow-reader and idle.
    - ``flood`` / ``churn``: how many connections those scenarios open at most.
    - ``drip_interval``: seconds between slowloris's bytes.
    - ``stall``: a canary round trip longer than this is a failure (seconds).
    - ``recovery``: after an attack a new connection must be served within this.
    - ``max_p99_ratio``: the canary's p99 during the attack may be at most this many
      times its quiet p99 (below ``P99_FLOOR`` seconds it always passes); 0 turns it off.
    """

    scenarios: tuple[str, ...] = attrs.field(
        default=SCENARIO_NAMES, converter=_to_scenarios, validator=_check_scenarios
    )
    duration: float = attrs.field(default=2.0, validator=_positive(float))
    quiet: float = attrs.field(default=0.5, validator=_positive(float))
    expect: Literal["echo", "any"] = attrs.field(default="echo", validator=_check_expect)
    connections: int = attrs.field(default=50, validator=_positive(int))
    flood: int = attrs.field(default=2000, validator=_positive(int))
    churn: int = attrs.field(default=5000, validator=_positive(int))
    drip_interval: float = attrs.field(default=1.0, validator=_positive(float))
    oversize_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_positive(int))
    oversize_time: float = attrs.field(default=20.0, validator=_positive(float))
    stall: float = attrs.field(default=1.0, validator=_positive(float))
    recovery: float = attrs.field(default=2.0, validator=_positive(float))
    max_p99_ratio: float = attrs.field(default=5.0, validator=_positive(float, allow_zero=True))
    seed: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))
