"""The PROXY protocol, versions 1 and 2 (HAProxy's), sans-IO.

Theory of operation
-------------------

A load balancer that speaks the PROXY protocol sends one header before the client's
first byte, saying who the client really is. :func:`parse_proxy_header` looks at the
bytes received so far and answers one of three things:

- ``None``: every byte so far is a valid beginning of a header; receive more;
- a :class:`ProxyHeader` whose ``length`` says how many of the bytes were the header
  (the rest, if any, already belongs to the client's stream);
- :class:`ProxyProtocolError`: these bytes can never become a header.

It decides as early as it can, so a client that sends, say, ``GET /`` instead of a
header is refused on its first bytes instead of at the handshake timeout, and a caller
that has ``None`` knows that *all* the bytes it has belong to the header: it may
consume them without peeking. A caller that reaches EOF while the answer is still
``None`` has a truncated header.

Version 1 is one text line, at most 107 bytes with its CRLF::

    PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\\r\\n
    PROXY UNKNOWN\\r\\n

Version 2 is binary: a 12-byte signature, version and command, family and transport,
a 16-bit length, the addresses, then type-length-value extensions (TLVs).

This module imports no trio, socket or clock: :mod:`ipaddress` does the address checks.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import attrs

__all__ = [
    "PROXY_V1_MAX_LENGTH",
    "PROXY_V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "encode_proxy_v1",
    "encode_proxy_v2",
    "parse_proxy_header",
]

ProxyVersions = Literal["v1", "v2", "auto"]

#: The longest v1 header the specification allows, CRLF included.
PROXY_V1_MAX_LENGTH = 107
#: The first 12 bytes of every v2 header.
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V2_FIXED = 16  # signature, version/command, family/transport, length
# v2 family byte (high nibble: address family, low nibble: transport) -> our name and
# the size of the address block. DGRAM transports are refused: this is a TCP server.
_V2_FAMILIES: dict[int, tuple[str, int]] = {
    0x00: ("unknown", 0),  # AF_UNSPEC
    0x11: ("tcp4", 12),  # AF_INET, STREAM: 4 + 4 + 2 + 2
    0x21: ("tcp6", 36),  # AF_INET6, STREAM: 16 + 16 + 2 + 2
    0x31: ("unix", 216),  # AF_UNIX, STREAM: 108 + 108
}

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """The bytes are not (and can never become) a valid PROXY header.

    The message is one line saying what is wrong.
    """


@attrs.frozen(kw_only=True)
class ProxyHeader:
    """A parsed PROXY header.

    - ``version``: 1 or 2.
    - ``command``: ``"proxy"`` (relayed for a client) or ``"local"`` (a v2 connection
      the proxy made itself, e.g. a health check: use the real addresses).
    - ``family``: ``"tcp4"``, ``"tcp6"``, ``"unix"`` or ``"unknown"``.
    - ``source`` / ``destination``: ``(host, port)`` for tcp4/tcp6, ``(path, 0)`` for
      unix, ``None`` when unknown or local.
    - ``tlvs``: v2 extensions as ``(type, value)`` pairs, in order.
    - ``length``: how many bytes the header took.
    """

    version: Literal[1, 2]
    command: Literal["proxy", "local"]
    family: Literal["tcp4", "tcp6", "unix", "unknown"]
    source: Address | None = None
    destination: Address | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    length: int


def parse_proxy_header(
    data: bytes | bytearray | memoryview, versions: ProxyVersions = "auto"
) -> ProxyHeader | None:
    """Parse a PROXY header at the start of ``data``.

    ``versions`` is ``"v1"``, ``"v2"`` or ``"auto"`` (either). Returns the header, or
    ``None`` if ``data`` is a valid but incomplete beginning of one (then every byte of
    ``data`` belongs to the header). Bytes after ``header.length`` are not looked at.

    Raises :class:`ProxyProtocolError` if ``data`` cannot start a valid header.
    """
    data = bytes(data[: _V2_FIXED + 0xFFFF])
    if not data:
        return None
    if versions not in ("v1", "v2", "auto"):
        raise ValueError(f"versions: expected 'v1', 'v2' or 'auto', got {versions!r}")
    if versions != "v2" and data[:1] == b"P":
        return _parse_v1(data)
    if versions != "v1" and data[:1] == b"\r":
        return _parse_v2(data)
    wanted = {"v1": "a PROXY v1 header", "v2": "a PROXY v2 header"}.get(
        versions, "a PROXY v1 or v2 header"
    )
    raise ProxyProtocolError(f"expected {wanted}, got {data[:16]!r}")


# -- version 1 -------------------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if not data.startswith(_V1_PREFIX[: len(data)]):
        raise ProxyProtocolError(f"expected a PROXY v1 header, got {data[:16]!r}")
    end = data.find(b"\r\n", 0, PROXY_V1_MAX_LENGTH)
    if end < 0:
        line = data[:PROXY_V1_MAX_LENGTH]
        if len(line) >= PROXY_V1_MAX_LENGTH:
            raise ProxyProtocolError(f"PROXY v1 header longer than {PROXY_V1_MAX_LENGTH} bytes")
        # A final CR may be the first half of the CRLF; any other control byte is bad.
        body = line[:-1] if line.endswith(b"\r") else line
        if any(byte < 0x20 or byte > 0x7E for byte in body):
            raise ProxyProtocolError("PROXY v1 header has a non-printable byte")
        return None
    line = data[:end]
    if any(byte < 0x20 or byte > 0x7E for byte in line):
        raise ProxyProtocolError("PROXY v1 header has a non-printable byte")
    return _v1_fields(line.decode("ascii").split(" "), length=end + 2)


def _v1_fields(fields: list[str], *, length: int) -> ProxyHeader:
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        # The specification lets the rest of an UNKNOWN line be anything: ignore it.
        return ProxyHeader(version=1, command="proxy", family="unknown", length=length)
    if len(fields) != 6:
        raise ProxyProtocolError(
            "PROXY v1 header must be 'PROXY TCP4|TCP6 SRC DST SPORT DPORT' or 'PROXY UNKNOWN'"
        )
    _, proto, src, dst, sport, dport = fields
    if proto not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, got {proto!r}")
    family: Literal["tcp4", "tcp6"] = "tcp4" if proto == "TCP4" else "tcp6"
    return ProxyHeader(
        version=1,
        command="proxy",
        family=family,
        source=(_v1_address(src, family), _v1_port(sport)),
        destination=(_v1_address(dst, family), _v1_port(dport)),
        length=length,
    )


def _v1_address(text: str, family: Literal["tcp4", "tcp6"]) -> str:
    try:
        if family == "tcp4":
            return str(ipaddress.IPv4Address(text))
        if "%" in text:  # scope ids mean nothing across machines
            raise ValueError(text)
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyProtocolError(
            f"PROXY v1 {family.upper()} address is not valid: {text!r}"
        ) from None


def _v1_port(text: str) -> int:
    # Decimal digits only, no sign, no leading zero (the specification's grammar).
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"PROXY v1 port is not a decimal number: {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"PROXY v1 port out of range: {text!r}")
    return port


# -- version 2 -------------------------------------------------------------------------


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if not data.startswith(PROXY_V2_SIGNATURE[: len(data)]):
        raise ProxyProtocolError("bad PROXY v2 signature")
    if len(data) < _V2_FIXED:
        if len(data) > 12:
            _v2_command(data[12])
        if len(data) > 13:
            _v2_family(data[13])
        return None
    command = _v2_command(data[12])
    family, address_size = _v2_family(data[13])
    body_length = int.from_bytes(data[14:16], "big")
    if command == "proxy" and body_length < address_size:
        raise ProxyProtocolError(
            f"PROXY v2 {family} header needs {address_size} address bytes, has {body_length}"
        )
    length = _V2_FIXED + body_length
    if len(data) < length:
        return None
    body = data[_V2_FIXED:length]
    # LOCAL: the proxy talks for itself (a health check); the specification says to
    # skip the whole block, family and addresses included.
    if command == "local":
        return ProxyHeader(version=2, command="local", family=family, length=length)
    source, destination = _v2_addresses(family, body)
    return ProxyHeader(
        version=2,
        command="proxy",
        family=family,
        source=source,
        destination=destination,
        tlvs=_v2_tlvs(body, address_size),
        length=length,
    )


def _v2_command(byte: int) -> Literal["proxy", "local"]:
    if byte >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 version must be 2, got {byte >> 4}")
    if byte & 0x0F == 0:
        return "local"
    if byte & 0x0F == 1:
        return "proxy"
    raise ProxyProtocolError(f"PROXY v2 command must be LOCAL or PROXY, got {byte & 0x0F}")


def _v2_family(byte: int) -> tuple[Literal["tcp4", "tcp6", "unix", "unknown"], int]:
    try:
        name, size = _V2_FAMILIES[byte]
    except KeyError:
        raise ProxyProtocolError(
            f"PROXY v2 family/transport 0x{byte:02x} is not a stream this server accepts"
        ) from None
    return name, size  # type: ignore[return-value]  # the table holds only those names


def _v2_addresses(family: str, body: bytes) -> tuple[Address | None, Address | None]:
    if family == "tcp4":
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        ports = body[8:12]
    elif family == "tcp6":
        src6, dst6 = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        return (str(src6), _port(body[32:34])), (str(dst6), _port(body[34:36]))
    elif family == "unix":
        return (_unix_path(body[0:108]), 0), (_unix_path(body[108:216]), 0)
    else:
        return None, None
    return (str(src), _port(ports[0:2])), (str(dst), _port(ports[2:4]))


def _port(two: bytes) -> int:
    return int.from_bytes(two, "big")


def _unix_path(raw: bytes) -> str:
    # The proxy's bytes end up in conn.local and in log lines: invalid UTF-8 becomes
    # \xNN and control characters (CR, LF, ESC, ...) their escapes, so a header
    # can neither forge a log line nor carry a lone surrogate into a str that
    # cannot be encoded again.
    text = raw.split(b"\x00", 1)[0].decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _v2_tlvs(body: bytes, start: int) -> tuple[tuple[int, bytes], ...]:
    tlvs: list[tuple[int, bytes]] = []
    at = start
    while at < len(body):
        if len(body) - at < 3:
            raise ProxyProtocolError("PROXY v2 TLV is truncated")
        kind, size = body[at], int.from_bytes(body[at + 1 : at + 3], "big")
        if at + 3 + size > len(body):
            raise ProxyProtocolError(f"PROXY v2 TLV 0x{kind:02x} runs past the header")
        tlvs.append((kind, body[at + 3 : at + 3 + size]))
        at += 3 + size
    return tuple(tlvs)


# -- encoding (what a proxy sends; used by tests and tools) ----------------------------


def encode_proxy_v1(source: Address | None = None, destination: Address | None = None) -> bytes:
    """A v1 header for a TCP connection from ``source`` to ``destination``.

    With no addresses it is ``PROXY UNKNOWN``. The family follows the addresses.
    Raises ValueError if they are not IP addresses of one family.
    """
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be of one address family")
    proto = "TCP4" if src.version == 4 else "TCP6"
    line = f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n"
    return line.encode("ascii")


def encode_proxy_v2(
    source: Address | None = None,
    destination: Address | None = None,
    *,
    local: bool = False,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """A v2 header: PROXY for ``source`` -> ``destination`` (IP addresses), or LOCAL.

    With no addresses the family is AF_UNSPEC. Raises ValueError for mixed families.
    """
    if source is None or destination is None:
        family, addresses = 0x00, b""
    else:
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
        if src.version != dst.version:
            raise ValueError("source and destination must be of one address family")
        family = 0x11 if src.version == 4 else 0x21
        ports = source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
        addresses = src.packed + dst.packed + ports
    extensions = b"".join(
        bytes([kind]) + len(value).to_bytes(2, "big") + value for kind, value in tlvs
    )
    body = addresses + extensions
    command = 0x20 if local else 0x21
    return PROXY_V2_SIGNATURE + bytes([command, family]) + len(body).to_bytes(2, "big") + body
