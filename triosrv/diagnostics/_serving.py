"""What the control and metrics endpoints share: the accept loop, client slots, isolation.

These are small side listeners, not the server: no admission control, no deadline
keeper, just "accept, wrap in a trio stream, serve in the endpoint's nursery". They
run in the nursery that runs the server, so the isolation rule (``_isolation.py``)
is enforced here:

- every accept error is counted and retried, as in the server's own accept loop;
- a client task that raises is logged (rate-limited) and closed; nothing it raises,
  Cancelled aside, reaches the endpoint's nursery;
- an endpoint that fails as a whole is logged and stops; the server goes on;
- every wait on a client is bounded: :class:`ClientSlots` gives each client an idle
  limit per read and a write limit per answer, and when every slot is taken a new
  client evicts the one that has been blocked longest, so a few clients that connect
  and never read cannot lock the operator out.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Awaitable, Callable

import trio

from .._isolation import accept_error_pause, is_handler_failure, rate_limited
from .._listeners import format_peer

logger = logging.getLogger("triosrv")

#: A client may take this long to read one answer before it is dropped (seconds).
WRITE_TIMEOUT = 10.0


class ClientSlot:
    """One admitted client: its cancel scope, and since when it keeps us waiting."""

    __slots__ = ("blocked_since", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        #: trio time since when we wait on the client (None: we are working for it).
        self.blocked_since: float | None = trio.current_time()

    def waiting(self) -> None:
        """We start (or go on) waiting on the client: for a request, or for it to
        take an answer. A client that drips a request stays "waiting" from its start."""
        if self.blocked_since is None:
            self.blocked_since = trio.current_time()

    def working(self) -> None:
        """We are working for the client (it cannot be evicted now)."""
        self.blocked_since = None


class ClientSlots:
    """At most ``limit`` clients at once; when full, a newcomer evicts the client that
    has waited on its peer longest (reading a request or being sent an answer).

    A client whose slot is taken is cancelled; one that is working (building an
    answer) is never evicted, so a full endpoint of working clients refuses the
    newcomer instead.
    """

    def __init__(self, limit: int, *, what: str) -> None:
        self.limit = limit
        self.what = what
        self.evicted = 0
        self._slots: set[ClientSlot] = set()

    def __len__(self) -> int:
        return len(self._slots)

    def admit(self) -> ClientSlot | None:
        """A slot for a new client, evicting the longest-blocked one when full; None
        if every client is busy."""
        if len(self._slots) >= self.limit:
            blocked = [s for s in self._slots if s.blocked_since is not None]
            if not blocked:
                return None
            victim = min(blocked, key=lambda s: s.blocked_since or 0.0)
            victim.scope.cancel()
            self._slots.discard(victim)
            self.evicted += 1
            logger.info(
                "%s: all %d client slots taken; dropped the client blocked longest",
                self.what,
                self.limit,
                extra=rate_limited(f"{self.what}_evicted"),
            )
        slot = ClientSlot()
        self._slots.add(slot)
        return slot

    def release(self, slot: ClientSlot) -> None:
        """The client is done (idempotent: an evicted slot is gone already)."""
        self._slots.discard(slot)


async def send_bounded(slot: ClientSlot, stream: trio.abc.SendStream, data: bytes) -> bool:
    """``send_all`` within :data:`WRITE_TIMEOUT`; False when the client did not read
    in time or went away (close it then)."""
    slot.waiting()
    try:
        with trio.move_on_after(WRITE_TIMEOUT):
            await stream.send_all(data)
            return True
        return False
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    finally:
        slot.working()


async def serve_isolated(
    slots: ClientSlots,
    serve_client: Callable[[ClientSlot, trio.SocketStream], Awaitable[None]],
    stream: trio.SocketStream,
    *,
    refuse: bytes = b"",
) -> None:
    """Run ``serve_client`` for one client in a slot of ``slots``; whatever it raises
    (Cancelled aside) is logged and ends only this client. ``refuse`` is sent to a
    client turned away because every slot is busy."""
    async with stream:
        slot = slots.admit()
        if slot is None:
            if refuse:
                with trio.move_on_after(1):
                    try:
                        await stream.send_all(refuse)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # it left already; it was being turned away anyway
            return
        try:
            with slot.scope:
                await serve_client(slot, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away mid-answer: nothing to tell it
        except BaseException as exc:
            if not is_handler_failure(exc):
                raise
            logger.error(
                "%s: a client request failed; the client is closed, the server goes on",
                slots.what,
                exc_info=exc,
                extra=rate_limited(f"{slots.what}_error"),
            )
        finally:
            slots.release(slot)


async def accept_loop(
    sock: socket.socket,
    nursery: trio.Nursery,
    serve_client: Callable[[trio.SocketStream], Awaitable[None]],
    *,
    what: str,
) -> None:
    """Accept on the non-blocking listening ``sock`` until cancelled; serve each
    client with ``serve_client`` in a task of ``nursery`` named
    ``triosrv {what} client PEER``. The caller owns and closes ``sock``. No accept
    error ends it (see ``_isolation.py``)."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            client, addr = sock.accept()
        except BlockingIOError:
            continue
        except OSError as exc:
            pause = accept_error_pause(exc)
            if pause:
                logger.warning(
                    "%s: accept failed: %s; pausing %g s",
                    what,
                    exc.strerror or exc,
                    pause,
                    extra=rate_limited(f"{what}_accept_error"),
                )
            await trio.sleep(pause)
            continue
        peer = format_peer(client, addr)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
        nursery.start_soon(serve_client, stream, name=f"triosrv {what} client {peer}")


async def guard_endpoint(what: str, run: Callable[[], Awaitable[object]]) -> None:
    """Run an auxiliary endpoint's work (``run()``, once it has started) so that its
    failure never ends the server: an exception is logged with its traceback and the
    endpoint stays down until its owner cancels it. Cancelled goes on up."""
    try:
        await run()
    except Exception:
        logger.exception("%s endpoint failed and stopped; the server goes on", what)
        await trio.sleep(math.inf)  # until the server stops and cancels us
