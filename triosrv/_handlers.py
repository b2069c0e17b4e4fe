"""Connection handlers: sans-IO protocols driven over a Connection, and handler lookup."""

from __future__ import annotations

import datetime
import importlib
import inspect
from collections.abc import Awaitable, Callable

from ._connection import Connection
from .lowlevel._sizes import SEND_SIZE
from .protocols import Chargen, Daytime, Discard, Echo, Protocol, answer_method

Handler = Callable[[Connection], Awaitable[object]]


class ProtocolHandler:
    """A connection handler that drives one sans-IO protocol per connection.

    Made by :func:`protocol_handler`. ``protocol_factory`` is the factory it was made
    from: the backends that do not run trio tasks per connection (``epoll``, ``poll``,
    ``select``, ``nonblocking``, ``blocking``, ``trio-fd``) drive the protocol
    themselves and need the factory, not the coroutine.
    """

    __slots__ = ("__name__", "__qualname__", "protocol_factory")

    def __init__(self, factory: Callable[[], Protocol]) -> None:
        self.protocol_factory = factory
        self.__name__ = self.__qualname__ = f"protocol_handler({_name(factory)})"

    def __repr__(self) -> str:
        return f"<{self.__name__}>"

    async def __call__(self, conn: Connection) -> None:
        """Drive one protocol over ``conn`` until it asks to close (see the module)."""
        protocol = self.protocol_factory()
        data_to_send = protocol.data_to_send
        receive_data = protocol.receive_data
        answer = answer_method(protocol)
        send_all = conn.send_all
        receive_some = conn.receive_some
        while True:
            out = data_to_send(SEND_SIZE)
            if out:
                await send_all(out)
            elif protocol.close_after_flush:
                return
            else:
                data = await receive_some()
                # The fast turn (see triosrv.protocols._base): while the protocol
                # answers each chunk outright, there is nothing else to ask it.
                # (Connection.receive_some returns bytes; a chunk longer than a
                # send, with recv_size above SEND_SIZE, takes receive_data.)
                while answer is not None and 0 < len(data) <= SEND_SIZE:
                    reply = answer(data, SEND_SIZE)
                    if reply is None:
                        break
                    if reply:
                        await send_all(reply)
                    data = await receive_some()
                receive_data(data)


def protocol_handler(factory: Callable[[], Protocol]) -> ProtocolHandler:
    """Turn a sans-IO protocol factory into a connection handler.

    For each connection the handler makes one protocol with ``factory()`` and drives
    it: it sends whatever the protocol has to send; when there is nothing and the
    protocol asks to close, it returns (the server then closes the connection);
    otherwise it receives one chunk and passes it on (``b""`` at the peer's EOF),
    through the protocol's ``answer`` fast path when it has one.
    Timeouts and peer resets end the loop as exceptions, which the server counts.
    The handler's ``protocol_factory`` attribute is ``factory``, for the backends that
    drive protocols themselves.
    """
    return ProtocolHandler(factory)


def _name(obj: object) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def _daytime_now() -> Daytime:
    return Daytime(datetime.datetime.now(datetime.UTC))


BUILTIN_HANDLERS: dict[str, ProtocolHandler] = {
    "echo": protocol_handler(Echo),
    "discard": protocol_handler(Discard),
    "chargen": protocol_handler(Chargen),
    "daytime": protocol_handler(_daytime_now),
}


def load_handler(spec: str) -> Handler:
    """A built-in handler by name, or ``module:callable`` for the user's own.

    The callable is an async function taking a Connection, or a
    :class:`~triosrv.protocols.Protocol` subclass (wrapped with
    :func:`protocol_handler`). Raises ValueError with a one-line reason.
    """
    if spec in BUILTIN_HANDLERS:
        return BUILTIN_HANDLERS[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        names = ", ".join(BUILTIN_HANDLERS)
        raise ValueError(f"expected one of {names}, or module:callable, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}") from None
    if isinstance(obj, type) and issubclass(obj, Protocol):
        return protocol_handler(obj)
    if inspect.iscoroutinefunction(obj):
        return obj  # checked above: an async function
    raise ValueError(f"{spec!r} is neither an async function nor a Protocol subclass")
