"""The contract every sans-IO byte protocol in triosrv fulfils.

Theory of operation
-------------------

A protocol object is a small state machine for *one* connection. It never touches a
socket, never starts a task and never reads a clock: the caller (the *driver*) owns the
stream and the time, feeds the protocol the bytes it received, and sends the bytes the
protocol hands back. This is the h11 design; it lets the same protocol run under every
backend of the server (trio streams, raw fds, select/poll/epoll loops, threads) and lets
its tests be plain synchronous functions.

The whole interface is three members:

``receive_data(data)``
    The bytes the peer sent, in order. ``b""`` means the peer sent EOF (it half-closed
    or closed its side). After EOF, receiving anything -- data or a second EOF -- is a
    driver bug and raises :exc:`ValueError`.

``data_to_send(max_bytes)``
    At most ``max_bytes`` bytes (``max_bytes >= 1``) that should go to the peer now, or
    ``b""`` if nothing is pending right now. Bytes returned are considered taken: the
    protocol forgets them, so the driver must send them before it asks again.

``close_after_flush``
    Becomes true once the protocol wants the connection closed as soon as
    ``data_to_send`` returns ``b""``.

Every driver runs this loop, and every protocol must work under it::

    while True:
        out = protocol.data_to_send(max_bytes)
        if out:
            await stream.send_all(out)      # send first: output has priority
        elif protocol.close_after_flush:
            break                           # the driver then closes the stream
        else:
            data = await stream.receive_some(max_bytes)
            protocol.receive_data(data)     # b"" at EOF

Two rules follow from that loop:

* **Backpressure is free.** The driver receives only when the protocol has nothing to
  send, so a protocol never has to hold more than about one received chunk; a peer that
  stops reading stalls ``send_all`` (and the driver's write timeout), not memory.
* **No reading after EOF.** Once ``receive_data(b"")`` has been called, a protocol must
  either have bytes to send or set ``close_after_flush``; otherwise the loop would
  receive again and hit the :exc:`ValueError` above. Each protocol in this package
  guarantees this, and the tests check it.

A protocol may keep sending forever and never ask for input (chargen does): under the
loop above the driver then never receives, and the connection ends only when a send
fails or a timeout fires.

The optional fast path: ``answer``
----------------------------------

The loop's most common turn for a request/response protocol is "receive a chunk, send
its whole reply, receive again": ``receive_data`` + ``data_to_send`` + ``data_to_send``
(which returns ``b""``) + ``close_after_flush`` -- four Python calls around two
syscalls. In the fastest backends those calls are a third of the Python time of a round
trip. A protocol may shorten that turn with one more method::

    def answer(self, data: bytes, max_bytes: int) -> bytes | None: ...

The driver calls it in place of ``receive_data(data)``, only with non-empty ``bytes``
no longer than ``max_bytes``: EOF always goes through ``receive_data``, and so does a
chunk the driver cannot vouch for (a ``bytearray`` from a stream, say, or a receive
larger than ``max_bytes``). The protocol need not check either, which on the hot path
is worth ~400 of the ~6,000 CPU instructions of a whole echo round trip (the call
itself costs about as much). ``None`` means "not now": nothing was taken
and the driver goes on with ``receive_data(data)`` as usual. Bytes (``b""`` included)
mean that ``data`` was taken and that they are *all* the protocol has to say for now:
at most ``max_bytes`` long, ``data_to_send`` would return ``b""`` after them and
``close_after_flush`` is false -- so the driver sends them and receives again. A
protocol that cannot promise that for a given chunk returns ``None``. Drivers find the
method with :func:`answer_method`; the base class has none, and the contract above is
complete without it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TypeAlias

__all__ = ["Answer", "Protocol", "ProtocolFactory", "answer_method"]


class Protocol(abc.ABC):
    """A sans-IO byte protocol for one connection; see the module docstring.

    Subclasses implement :meth:`receive_data`, :meth:`data_to_send` and
    :attr:`close_after_flush`. An instance is used by one driver, for one connection,
    from one thread; it is not reused.
    """

    __slots__ = ()

    @abc.abstractmethod
    def receive_data(self, data: bytes) -> None:
        """Take the bytes the peer sent; ``b""`` means the peer sent EOF.

        The bytes must be given in the order they arrived. The protocol keeps no
        reference to a mutable buffer: implementations that accept ``bytearray`` or
        ``memoryview`` copy it.

        Raises:
            ValueError: if called after EOF was already received (a driver bug).
        """

    @abc.abstractmethod
    def data_to_send(self, max_bytes: int) -> bytes:
        """Return at most *max_bytes* bytes to send now, or ``b""`` if none are pending.

        The returned bytes are taken: the protocol will not return them again.

        Raises:
            ValueError: if *max_bytes* is less than 1.
        """

    @property
    @abc.abstractmethod
    def close_after_flush(self) -> bool:
        """True once the connection should close as soon as nothing is left to send."""


ProtocolFactory: TypeAlias = Callable[[], Protocol]
"""Builds a fresh :class:`Protocol` for each accepted connection.

A protocol class with a no-argument constructor is a factory (``Echo``). When the
protocol needs the time, the factory is where the caller reads the clock, e.g.
``lambda: Daytime(datetime.now(timezone.utc))``.
"""


Answer: TypeAlias = Callable[[bytes, int], "bytes | None"]
"""A protocol's bound ``answer`` method (see "The optional fast path" above)."""


def answer_method(protocol: object) -> Answer | None:
    """Return ``protocol``'s ``answer`` fast path, or ``None`` if it has none.

    Looked up once per connection by the drivers, so that the hot path pays for one
    ``is None`` test, not an attribute lookup. Works for any object with the three
    members of the contract, subclass of :class:`Protocol` or not.
    """
    answer = getattr(protocol, "answer", None)
    return answer if callable(answer) else None


# The two helpers below build (not raise) the exceptions, so that the hot paths pay
# only for one comparison and the messages live in one place.


def bad_max_bytes(max_bytes: int) -> ValueError:
    """Return the error for a ``data_to_send`` call with ``max_bytes < 1``."""
    return ValueError(f"data_to_send() needs max_bytes >= 1, got {max_bytes!r}")


def data_after_eof(protocol: Protocol) -> ValueError:
    """Return the error for a ``receive_data`` call after EOF was received."""
    return ValueError(
        f"{type(protocol).__name__}.receive_data() called after EOF (b'') was already "
        "received; the driver must stop receiving once the peer has sent EOF"
    )
