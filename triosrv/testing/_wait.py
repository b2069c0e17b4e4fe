"""Waiting for a condition that has no event to wait on: :func:`wait_for`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


def _name(predicate: Callable[[], object]) -> str:
    # A lambda's repr says nothing; its qualname and first line say where it is.
    code = getattr(predicate, "__code__", None)
    name = getattr(predicate, "__qualname__", repr(predicate))
    if code is None:
        return name
    return f"{name} ({code.co_filename}:{code.co_firstlineno})"


async def wait_for(
    predicate: Callable[[], T], *, timeout: float = 5.0, interval: float = 0.01
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something true;
    return that value.

    For state that changes without an event to wait on, such as a server's statistics
    while the kernel delivers bytes over a real socket::

        await triosrv.testing.wait_for(lambda: server.statistics().active == 0)

    Both durations are in trio's clock: virtual under ``MockClock`` (autojump moves
    straight to the next poll), real seconds otherwise. ``predicate`` is a plain function
    and runs in the calling task; it is called once before the first sleep, so a
    condition already true costs no wait. Cancellation propagates.

    Raises :class:`trio.TooSlowError`, naming the predicate, when it is still false after
    ``timeout`` seconds; ``ValueError`` if ``interval`` is not positive.
    """
    if not interval > 0:
        raise ValueError(f"interval must be > 0 seconds, not {interval!r}")
    with trio.move_on_after(timeout):
        while not (value := predicate()):
            await trio.sleep(interval)
        return value
    raise trio.TooSlowError(f"{_name(predicate)} still false after {timeout} s")
