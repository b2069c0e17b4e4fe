"""The sans-IO PROXY protocol parser: synchronous, bytes in, a header (or None) out."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triosrv.protocols import (
    PROXY_V1_MAX_LENGTH,
    PROXY_V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    encode_proxy_v1,
    encode_proxy_v2,
    parse_proxy_header,
)

ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
addresses = st.one_of(
    st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)),
    st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports)),
)
tlv_lists = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4).map(tuple)


# -- version 1 -------------------------------------------------------------------------


def test_proxy_v1_parses_the_specification_example() -> None:
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"
    header = parse_proxy_header(data)
    assert header == ProxyHeader(
        version=1,
        command="proxy",
        family="tcp4",
        source=("192.168.0.1", 56324),
        destination=("192.168.0.11", 443),
        length=47,
    )
    assert data[header.length :] == b"GET / HTTP/1.1\r\n"


def test_proxy_v1_parses_tcp6() -> None:
    header = parse_proxy_header(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n", "v1")
    assert header is not None
    assert header.family == "tcp6"
    assert header.source == ("2001:db8::1", 1)
    assert header.destination == ("::1", 65535)


def test_proxy_v1_unknown_ignores_the_rest_of_the_line() -> None:
    header = parse_proxy_header(b"PROXY UNKNOWN whatever 1 2\r\nrest")
    assert header is not None
    assert (header.family, header.source, header.length) == ("unknown", None, 28)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",  # a field too many
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # a field too few
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",  # no such protocol
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",  # bad address
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",  # v6 address in TCP4
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",  # v4 address in TCP6
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # scope id
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",  # port out of range
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # leading zero
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",  # sign
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # double space
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # bare LF
        b"PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n",  # control byte
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n",  # non-ASCII
        b"PROXY\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # the keyword is upper case
    ],
)
def test_proxy_v1_rejects_malformed_line(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(line)


def test_proxy_v1_rejects_a_line_longer_than_107_bytes() -> None:
    data = b"PROXY UNKNOWN " + b"x" * (PROXY_V1_MAX_LENGTH - 14)
    assert len(data) == PROXY_V1_MAX_LENGTH
    with pytest.raises(ProxyProtocolError, match="longer than 107"):
        parse_proxy_header(data)
    # 105 bytes and a CRLF are exactly the limit.
    assert parse_proxy_header(data[:105] + b"\r\n") is not None


def test_proxy_v1_rejects_garbage_on_the_first_bytes() -> None:
    with pytest.raises(ProxyProtocolError, match="expected a PROXY v1 or v2 header"):
        parse_proxy_header(b"GET / HTTP/1.1\r\n")
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(b"PROXX")


@given(addresses)
def test_proxy_v1_round_trips_any_address(pair: tuple[tuple[str, int], tuple[str, int]]) -> None:
    source, destination = pair
    data = encode_proxy_v1(source, destination)
    header = parse_proxy_header(data)
    assert header is not None
    assert header.length == len(data) <= PROXY_V1_MAX_LENGTH
    assert header.source == source
    assert header.destination == destination
    assert header.family == ("tcp4" if ":" not in source[0] else "tcp6")


# -- version 2 -------------------------------------------------------------------------


def test_proxy_v2_parses_tcp4_with_tlvs_and_leaves_the_rest() -> None:
    data = encode_proxy_v2(("203.0.113.7", 5000), ("10.0.0.1", 80), tlvs=((0x04, b""),))
    header = parse_proxy_header(data + b"client bytes")
    assert header is not None
    assert header.version == 2
    assert header.source == ("203.0.113.7", 5000)
    assert header.tlvs == ((0x04, b""),)
    assert header.length == len(data) == 16 + 12 + 3


def test_proxy_v2_local_ignores_addresses() -> None:
    header = parse_proxy_header(encode_proxy_v2(("1.2.3.4", 1), ("5.6.7.8", 2), local=True))
    assert header is not None
    assert (header.command, header.source, header.destination) == ("local", None, None)


def test_proxy_v2_unspec_has_no_addresses() -> None:
    header = parse_proxy_header(encode_proxy_v2())
    assert header is not None
    assert (header.command, header.family, header.source) == ("proxy", "unknown", None)


def test_proxy_v2_parses_unix_paths() -> None:
    body = b"/run/a.sock".ljust(108, b"\x00") + b"/run/b.sock".ljust(108, b"\x00")
    data = PROXY_V2_SIGNATURE + b"\x21\x31" + len(body).to_bytes(2, "big") + body
    header = parse_proxy_header(data, "v2")
    assert header is not None
    assert header.source == ("/run/a.sock", 0)
    assert header.destination == ("/run/b.sock", 0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (PROXY_V2_SIGNATURE[:5] + b"X", "signature"),
        (PROXY_V2_SIGNATURE + b"\x11", "version must be 2"),
        (PROXY_V2_SIGNATURE + b"\x22", "command"),
        (PROXY_V2_SIGNATURE + b"\x21\x12", "0x12"),  # AF_INET over DGRAM
        (PROXY_V2_SIGNATURE + b"\x21\x41", "0x41"),  # no such family
        (PROXY_V2_SIGNATURE + b"\x21\x11\x00\x0b" + b"x" * 11, "needs 12"),
        (PROXY_V2_SIGNATURE + b"\x21\x11\x00\x0e" + b"x" * 12 + b"\x01\x00", "truncated"),
        (PROXY_V2_SIGNATURE + b"\x21\x11\x00\x10" + b"x" * 12 + b"\x01\x00\x05z", "runs past"),
    ],
)
def test_proxy_v2_rejects_malformed_header(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(data)


@given(addresses, tlv_lists)
def test_proxy_v2_round_trips_any_address_and_tlvs(
    pair: tuple[tuple[str, int], tuple[str, int]], tlvs: tuple[tuple[int, bytes], ...]
) -> None:
    source, destination = pair
    data = encode_proxy_v2(source, destination, tlvs=tlvs)
    header = parse_proxy_header(data, "v2")
    assert header is not None
    assert (header.source, header.destination, header.tlvs) == (source, destination, tlvs)
    assert header.length == len(data)


# -- versions, truncation, fuzzing -------------------------------------------------------


def test_proxy_versions_restrict_what_is_accepted() -> None:
    v1, v2 = encode_proxy_v1(("1.2.3.4", 1), ("5.6.7.8", 2)), encode_proxy_v2()
    with pytest.raises(ProxyProtocolError, match="v2 header"):
        parse_proxy_header(v1, "v2")
    with pytest.raises(ProxyProtocolError, match="v1 header"):
        parse_proxy_header(v2, "v1")
    assert parse_proxy_header(v1, "auto") is not None
    assert parse_proxy_header(v2, "auto") is not None


def test_proxy_empty_input_needs_more() -> None:
    assert parse_proxy_header(b"") is None


any_header = st.one_of(
    addresses.map(lambda pair: encode_proxy_v1(*pair)),
    st.tuples(addresses, tlv_lists).map(lambda a: encode_proxy_v2(*a[0], tlvs=a[1])),
    st.just(b"PROXY UNKNOWN\r\n"),
    st.just(encode_proxy_v2(local=True)),
)


@given(any_header, st.data())
def test_proxy_truncated_header_always_needs_more(data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(data) - 1))
    assert parse_proxy_header(data[:cut]) is None


@given(any_header, st.binary(max_size=64))
def test_proxy_header_length_ignores_what_follows(data: bytes, rest: bytes) -> None:
    alone, followed = parse_proxy_header(data), parse_proxy_header(data + rest)
    assert alone is not None
    assert followed == alone
    assert alone.length == len(data)


@given(any_header, st.data())
def test_proxy_corrupted_header_fails_only_with_proxy_protocol_error(
    data: bytes, draw: st.DataObject
) -> None:
    at = draw.draw(st.integers(0, len(data) - 1))
    value = draw.draw(st.integers(0, 255))
    corrupted = data[:at] + bytes([value]) + data[at + 1 :]
    try:
        header = parse_proxy_header(corrupted)
    except ProxyProtocolError as exc:
        assert "\n" not in str(exc)  # one line
        return
    # Some corruptions still parse (a changed port digit); then the length is sane.
    assert header is None or 0 < header.length <= len(corrupted)


@given(st.binary(max_size=300))
def test_proxy_random_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        header = parse_proxy_header(data)
    except ProxyProtocolError:
        return
    if header is None:
        # "Need more" promises every byte belongs to a header: so does any prefix.
        for cut in range(len(data)):
            assert parse_proxy_header(data[:cut]) is None
    else:
        assert 0 < header.length <= len(data)


def test_proxy_encoders_refuse_mixed_families() -> None:
    with pytest.raises(ValueError, match="one address family"):
        encode_proxy_v1(("1.2.3.4", 1), ("::1", 2))
    with pytest.raises(ValueError, match="one address family"):
        encode_proxy_v2(("::1", 1), ("1.2.3.4", 2))


def test_proxy_v1_normalises_addresses() -> None:
    header = parse_proxy_header(b"PROXY TCP6 2001:DB8:0:0::1 ::1 1 2\r\n")
    assert header is not None and header.source is not None
    assert header.source[0] == str(ipaddress.IPv6Address("2001:db8::1"))
