"""A line protocol on triosrv: one command per line in, one reply per line out.

Serve it with the triosrv command line (the handler is ``lineproto:handler``)::

    PYTHONPATH=examples triosrv listen --handler lineproto:handler --port 7000 --idle-timeout 60

and talk to it with any line client (``nc``, ``telnet``, ``socat``), or with
:func:`client` below. Commands (case-insensitive), each answered on one line:

    PING            -> +PONG
    ECHO text       -> +text
    SUM 1 2 3       -> +6
    QUIT            -> +BYE, then the server closes

Lines may end with ``\\r\\n`` (telnet) or ``\\n`` (nc): the framing is lenient. A line
longer than 1 KiB gets ``-ERR line too long`` and the connection is closed. See
docs/howto/framing.md.
"""

from __future__ import annotations

import trio

import triosrv
from triosrv.protocols import FrameTooLongError, IncompleteFrameError, LineFramer

MAX_LINE = 1024


def reply_to(line: bytes) -> bytes:
    """The reply to one command line (without its line end)."""
    command, _, argument = line.partition(b" ")
    command = command.upper()
    if command == b"PING":
        return b"+PONG"
    if command == b"ECHO":
        return b"+" + argument
    if command == b"SUM":
        try:
            return b"+%d" % sum(int(word) for word in argument.split())
        except ValueError:
            return b"-ERR SUM takes integers"
    return b"-ERR unknown command"


async def handler(conn: triosrv.Connection) -> None:
    """Serve one connection: read lines, answer each, until QUIT or EOF."""
    lines = triosrv.FrameChannel(conn, LineFramer(crlf="lenient", max_length=MAX_LINE))
    try:
        async for line in lines:
            if line.upper() == b"QUIT":
                await lines.send(b"+BYE")
                return  # the server closes the connection
            await lines.send(reply_to(line))
    except FrameTooLongError:
        await conn.send_all(b"-ERR line too long\r\n")
    except IncompleteFrameError:
        pass  # the client closed in the middle of a line: nothing to answer


async def client(address: tuple[str, int], commands: list[bytes]) -> list[bytes]:
    """Send *commands*, one per line, and return the replies (a pipelined client)."""
    stream = await trio.open_tcp_stream(*address)
    async with triosrv.FrameChannel(stream, LineFramer(crlf="lenient")) as lines:
        await lines.send_many(commands)
        return [await lines.receive() for _ in commands]
