"""Sans-IO byte protocols: bytes in, bytes out, no sockets, no tasks, no clock.

See :mod:`triosrv.protocols._base` for the contract and the driver loop every protocol
runs under. The framers (:class:`LineFramer`, :class:`LengthPrefixFramer`,
:class:`NetstringFramer`) split a byte stream into frames under one interface, described
in :mod:`triosrv.protocols._framing`; :class:`triosrv.FrameChannel` binds one to a
connection for async handlers.
"""

from __future__ import annotations

from ._base import Answer, Protocol, ProtocolFactory, answer_method
from ._chargen import CHARGEN_LINE_LENGTH, Chargen, chargen_line
from ._daytime import Daytime
from ._discard import Discard
from ._echo import Echo
from ._framing import (
    END_OF_STREAM,
    NEED_DATA,
    Framer,
    FrameTooLongError,
    FramingError,
    IncompleteFrameError,
    MalformedFrameError,
    NoFrame,
)
from ._lines import LineFramer
from ._prefixed import LengthPrefixFramer, NetstringFramer, decode_varint, encode_varint
from ._proxy import (
    PROXY_V1_MAX_LENGTH,
    PROXY_V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    encode_proxy_v1,
    encode_proxy_v2,
    parse_proxy_header,
)
from ._resp import (
    RESP_DEFAULT_MAX_BULK_LEN,
    RESP_DEFAULT_MAX_QUERY_BUFFER,
    RESP_INLINE_MAX_SIZE,
    RESP_NULL_ARRAY,
    RESP_NULL_BULK,
    RESP_OK,
    RespParser,
    RespProtocolError,
    RespValue,
    parse_resp_int,
    resp_array,
    resp_bulk,
    resp_error,
    resp_integer,
    resp_simple,
    split_resp_inline,
)

__all__ = [
    "CHARGEN_LINE_LENGTH",
    "END_OF_STREAM",
    "NEED_DATA",
    "PROXY_V1_MAX_LENGTH",
    "PROXY_V2_SIGNATURE",
    "RESP_DEFAULT_MAX_BULK_LEN",
    "RESP_DEFAULT_MAX_QUERY_BUFFER",
    "RESP_INLINE_MAX_SIZE",
    "RESP_NULL_ARRAY",
    "RESP_NULL_BULK",
    "RESP_OK",
    "Answer",
    "Chargen",
    "Daytime",
    "Discard",
    "Echo",
    "FrameTooLongError",
    "Framer",
    "FramingError",
    "IncompleteFrameError",
    "LengthPrefixFramer",
    "LineFramer",
    "MalformedFrameError",
    "NetstringFramer",
    "NoFrame",
    "Protocol",
    "ProtocolFactory",
    "ProxyHeader",
    "ProxyProtocolError",
    "RespParser",
    "RespProtocolError",
    "RespValue",
    "answer_method",
    "chargen_line",
    "decode_varint",
    "encode_proxy_v1",
    "encode_proxy_v2",
    "encode_varint",
    "parse_proxy_header",
    "parse_resp_int",
    "resp_array",
    "resp_bulk",
    "resp_error",
    "resp_integer",
    "resp_simple",
    "split_resp_inline",
]
