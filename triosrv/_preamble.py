"""What happens to an accepted connection before its handler: PROXY header, TLS.

Theory of operation
-------------------

Behind a load balancer the first bytes on a connection are a PROXY header naming the
real client; with TLS they are a handshake. Both run in the connection's own task (the
accept loop never waits for a client), inside the connection's cancel scope (so
shutdown and ``lifetime`` reach them), and together under one ``handshake`` deadline: a
client that connects and says nothing is closed when it expires, and the server counts
a ``"handshake"`` timeout. A connection that fails here is logged at info level with
its peer, counted in :attr:`Preamble.failures`, and never reaches the handler.

The PROXY header is read straight from the socket *without consuming a byte beyond
it*: the parser (:func:`triosrv.protocols.parse_proxy_header`) says either "complete,
N bytes" or "incomplete, and every byte so far is header". So the reader peeks
(``MSG_PEEK``) at what the kernel holds; when the header is incomplete it consumes all
of it and waits for more; when complete it consumes exactly the header's bytes. The
client's first bytes stay in the kernel for the TLS layer or the handler, and plain TCP
keeps the fast :class:`~triosrv.SocketConnection`.

The source of the PROXY header (the load balancer) is checked against
``proxy_allow_from`` before a byte is read: anybody else could claim any address.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import socket
import ssl
import stat
from collections import Counter
from typing import TYPE_CHECKING, Literal

import trio

from ._connection import Connection, SocketConnection, StreamConnection
from ._errors import ConfigError
from ._isolation import rate_limited
from .protocols import ProxyHeader, ProxyProtocolError, parse_proxy_header

if TYPE_CHECKING:
    from ._config import ServerConfig

logger = logging.getLogger("triosrv")

# How much one peek looks at: a v2 header with IPv6 addresses and a few TLVs, and any
# v1 header, fit (HAProxy keeps its headers under 536 bytes, one minimal TCP segment).
PEEK_SIZE = 536
#: The kinds counted in :attr:`Preamble.failures`: a bad or missing PROXY header, a
#: PROXY source outside ``proxy_allow_from``, a failed TLS handshake, and a peer that
#: reset before sending its PROXY header (a load balancer's health check does that),
#: and a failure of the preamble itself on one peer's bytes (logged with its traceback).
FAILURE_KINDS = ("proxy_header", "proxy_refused", "tls", "reset", "error")


class TLSConnection(StreamConnection):
    """A :class:`~triosrv.StreamConnection` over :class:`trio.SSLStream` on an accepted socket.

    ``stream`` is the :class:`trio.SSLStream` (for ``getpeercert()``,
    ``selected_alpn_protocol()``, ...); ``sock`` is the TCP socket under it, which the
    stream owns and closes. TLS has no half-close: :meth:`send_eof` raises TypeError.
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        peer: str = "?",
        local: str = "?",
        recv_size: int = 65536,
    ) -> None:
        self.sock = sock
        transport = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        stream = trio.SSLStream(transport, context, server_side=True)
        super().__init__(stream, peer=peer, local=local, recv_size=recv_size)


def load_tls_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2+, Python's secure defaults) with this chain.

    Raises :class:`~triosrv.ConfigError` in one line if the files cannot be loaded.
    Encrypted keys are refused rather than prompting on the terminal.
    """

    def no_password() -> bytes:
        raise ConfigError(f"tls_keyfile: {keyfile or certfile} is encrypted; use a plain key")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        for path in (certfile, keyfile):
            # A FIFO or a device would block start-up in load_cert_chain (reading a
            # FIFO waits for a writer): only a regular file is a certificate or a key.
            if path is not None and not stat.S_ISREG(os.stat(path).st_mode):
                field = "tls_certfile" if path == certfile else "tls_keyfile"
                raise ConfigError(f"{field}: cannot load {path}: not a regular file")
        context.load_cert_chain(certfile, keyfile, password=no_password)
    except OSError as exc:  # ssl.SSLError is an OSError too
        reason = exc.strerror or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"tls_certfile: cannot load {certfile}: {reason}") from None
    return context


class Preamble:
    """The per-connection steps before the handler, built from a :class:`ServerConfig`.

    The server calls :meth:`open_connection` for every accepted socket and
    :meth:`run` at the start of the connection's task. ``timeouts_fired`` is the
    server's counter of fired timeouts (``statistics().timeouts``); a handshake
    timeout is added to it. ``failures`` counts the other endings by kind
    (:data:`FAILURE_KINDS`).
    """

    def __init__(self, config: ServerConfig, *, timeouts_fired: Counter[str]) -> None:
        self._tls = (
            load_tls_context(config.tls_certfile, config.tls_keyfile)
            if config.tls_certfile is not None
            else None
        )
        self._proxy = config.proxy_protocol
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in config.proxy_allow_from]
        handshake = config.timeouts.handshake
        self._handshake = math.inf if handshake is None else handshake
        self._timeouts = config.timeouts
        self._fired = timeouts_fired
        self.failures: Counter[str] = Counter({kind: 0 for kind in FAILURE_KINDS})

    @classmethod
    def from_config(cls, config: ServerConfig, *, timeouts_fired: Counter[str]) -> Preamble | None:
        """A Preamble, or None when the config asks for neither TLS nor PROXY."""
        if config.tls_certfile is None and config.proxy_protocol == "off":
            return None
        return cls(config, timeouts_fired=timeouts_fired)

    def open_connection(
        self, sock: socket.socket, *, peer: str, local: str, recv_size: int
    ) -> SocketConnection | TLSConnection:
        """The connection object for an accepted socket (TLS or plain)."""
        if self._tls is not None:
            return TLSConnection(sock, self._tls, peer=peer, local=local, recv_size=recv_size)
        return SocketConnection(sock, peer=peer, local=local, recv_size=recv_size)

    async def run(self, conn: Connection) -> bool:
        """Read the PROXY header and do the TLS handshake, under the handshake deadline.

        Returns True if the handler may have the connection. On False the reason was
        logged and counted; the caller closes the connection.
        """
        if not isinstance(conn, SocketConnection | TLSConnection):
            raise TypeError(f"the preamble needs a socket connection, got {conn!r}")
        with trio.move_on_after(self._handshake):
            try:
                return await self._proxy_header(conn) and await self._tls_handshake(conn)
            except Exception:
                # A bug of ours, or of a library, on one peer's bytes ends only that
                # connection (the isolation rule, _isolation.py).
                self.failures["error"] += 1
                logger.exception(
                    "connection %d from %s: the preamble failed",
                    conn.id,
                    conn.peer,
                    extra=rate_limited("preamble_error"),
                )
                return False
        self._fired["handshake"] += 1
        conn.expire("handshake", self._timeouts)  # so conn.timed_out says why it ended
        logger.info(
            "connection %d from %s: handshake timeout after %g s",
            conn.id,
            conn.peer,
            self._handshake,
            extra=rate_limited("handshake_timeout"),
        )
        return False

    async def _proxy_header(self, conn: SocketConnection | TLSConnection) -> bool:
        if self._proxy == "off":
            return True
        try:
            if not self._source_allowed(conn):
                return False
            header = await read_proxy_header(conn.sock, self._proxy)
        except ProxyProtocolError as exc:
            return self._failed(conn, "proxy_header", f"bad PROXY header: {exc}")
        except trio.BrokenResourceError as exc:
            # Health checks connect and reset all day: not worth an info line.
            self.failures["reset"] += 1
            logger.debug("connection %d from %s: reset: %s", conn.id, conn.peer, exc)
            return False
        _apply_header(conn, header)
        return True

    async def _tls_handshake(self, conn: SocketConnection | TLSConnection) -> bool:
        if not isinstance(conn, TLSConnection):
            return True
        stream = conn.stream
        if not isinstance(stream, trio.SSLStream):
            raise TypeError(f"a TLS connection without an SSLStream: {stream!r}")
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            reason = exc.__cause__ or exc
            return self._failed(conn, "tls", f"TLS handshake failed: {reason}")
        return True

    def _failed(self, conn: Connection, kind: str, message: str) -> bool:
        self.failures[kind] += 1
        logger.info(
            "connection %d from %s: %s",
            conn.id,
            conn.peer,
            message,
            extra=rate_limited(f"handshake_{kind}"),
        )
        return False

    def _source_allowed(self, conn: SocketConnection | TLSConnection) -> bool:
        if conn.sock.family == socket.AF_UNIX:
            return True  # the socket file's permissions decide who may connect
        try:
            host = conn.sock.getpeername()[0]
        except OSError as exc:  # the proxy reset before we looked
            raise trio.BrokenResourceError(f"peer gone: {exc}") from exc
        address = ipaddress.ip_address(host.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self._allowed):
            return True
        return self._failed(
            conn, "proxy_refused", f"PROXY header refused: {address} is not in proxy_allow_from"
        )


async def read_proxy_header(
    sock: socket.socket, versions: Literal["v1", "v2", "auto"]
) -> ProxyHeader:
    """Read exactly one PROXY header from a non-blocking socket; leave the rest.

    ``versions`` is ``"v1"``, ``"v2"`` or ``"auto"``. Raises
    :class:`~triosrv.protocols.ProxyProtocolError` for a bad header or an EOF before
    a complete one, :class:`trio.BrokenResourceError` if the peer resets.
    """
    got = bytearray()
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            peeked = sock.recv(PEEK_SIZE, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"connection broken: {exc}") from exc
        if not peeked:
            what = "in the middle of" if got else "before"
            raise ProxyProtocolError(f"connection closed {what} the PROXY header")
        header = parse_proxy_header(got + peeked, versions)
        # Consume only header bytes: all of them when incomplete, else exactly the rest.
        take = len(peeked) if header is None else header.length - len(got)
        try:
            consumed = sock.recv(take)
        except OSError as exc:  # BlockingIOError too: what was peeked is there to read
            raise trio.BrokenResourceError(f"connection broken: {exc}") from exc
        got += consumed
        # The kernel returns what it just showed; should it return less, the header
        # is not complete yet: peek again rather than trust a partial read.
        if header is not None and len(consumed) == take:
            return header


def _apply_header(conn: Connection, header: ProxyHeader) -> None:
    # LOCAL (a health check by the proxy itself) and UNKNOWN keep the real addresses.
    if header.command == "local" or header.source is None or header.destination is None:
        return
    if header.family == "unix":
        conn.peer, conn.local = "unix", f"unix:{header.destination[0]}"
        return
    conn.peer = _format_address(*header.source)
    conn.local = _format_address(*header.destination)


def _format_address(host: str, port: int) -> str:
    if ":" not in host:
        return f"{host}:{port}"
    if host.startswith("::ffff:") and "." in host:
        return f"{host[7:]}:{port}"
    return f"[{host}]:{port}"
