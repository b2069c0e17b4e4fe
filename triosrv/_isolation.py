"""The isolation rule: what may end each task the server starts, and what may end the server.

This module is the one place the rule is written down in code; the docs
(docs/explanation/design.md, "Isolation") include this text. Every task a running
server starts has an owner and a failure rule:

==========================  ==========================  ===================================
task                        ended by                    what its failure ends
==========================  ==========================  ===================================
connection (handler,        its peer, its timeouts,     that connection only: counted
preamble: PROXY, TLS)       any exception the handler   (``handler_errors``, ``broken``,
                            raises -- BaseException     ``handshake_failures``), logged
                            included, Cancelled aside   (rate-limited), closed. With
                                                        ``handler_errors="raise"`` the
                                                        handler's exception ends the server
                                                        (trio's semantics, for tests)
listener (accept loop)      shutdown, cancellation      nothing: every accept() errno is
                                                        counted and retried (see
                                                        :func:`accept_error_pause`)
deadline keeper             shutdown, cancellation      nothing: a failure to stop one
                                                        connection is logged, the keeper
                                                        goes on with the others
auxiliary client (control,  its peer, its idle and      that client only: logged, closed.
metrics)                    write timeouts, eviction    An auxiliary endpoint that fails as
                            by a newer client           a whole is logged and stops; the
                                                        main server goes on
signal watcher              the operator's signals      SIGINT/SIGTERM/SIGQUIT/SIGXCPU (and
                                                        SIGHUP in a plain server) start the
                                                        graceful drain; a second one cancels
                                                        at once; stray signals (SIGALRM,
                                                        real-time, ...) are logged, ignored
worker (``--workers``)      the supervisor              a worker's death is logged and it
                                                        is restarted (backed off)
==========================  ==========================  ===================================

Only the operator's own stop (a signal, ``server.shutdown()``, cancelling the scope that
runs ``serve()``) or ``handler_errors="raise"`` ends a server. Nothing a peer sends and no
exception a handler raises does.

``trio.Cancelled`` is never swallowed anywhere: it belongs to a scope above whoever
sees it. A ``Cancelled`` that a handler raises while no scope around it is cancelled
(made by hand, or kept from an inner scope) belongs to no scope: it is that handler's
error (:func:`is_handler_failure`).
``KeyboardInterrupt`` raised *by a handler* is a handler error; one raised by trio for a
real Ctrl-C never reaches a handler, because connection tasks run with KI protection
enabled and trio delivers it to the main task instead.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import Callable

import trio

# accept() errors that mean "out of resources right now": pause and retry (trio's list).
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() errors that belong to one connection that died in the queue, not to the
# listener: accept(2) says to treat them like EAGAIN and retry at once. Linux passes
# pending network errors of the new socket up through accept(); EPERM is a firewall
# rule refusing that one connection. The same list as trio's serve_listeners.
TRANSIENT_ACCEPT_ERRNOS = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
        errno.EPERM,
        errno.EINTR,
        errno.ETIMEDOUT,
    }
)
# How long accepting rests after an out-of-resources error, and after an error
# accept(2) does not explain (EBADF, EINVAL, ...): a bug or a broken listener. The
# latter is logged and retried slowly rather than ending the server: the connections
# already accepted keep being served, and an operator reads the log.
RESOURCE_PAUSE = 0.1
UNEXPECTED_PAUSE = 1.0


def accept_error_pause(exc: OSError) -> float:
    """How long an accept loop rests after ``accept()`` raised ``exc`` (0: retry now).

    Never raises: no accept error ends a server (see the module docstring).
    """
    if exc.errno in TRANSIENT_ACCEPT_ERRNOS:
        return 0.0
    if exc.errno in RESOURCE_ERRNOS:
        return RESOURCE_PAUSE
    return UNEXPECTED_PAUSE


def is_handler_failure(exc: BaseException) -> bool:
    """True for what a handler may raise that ends only its own connection: every
    exception but a ``trio.Cancelled`` that belongs to a cancelled scope above the
    handler. Call it from the task that ran the handler, in its ``except``.

    A ``Cancelled`` while no scope around the calling task is cancelled was made or
    kept by the handler itself (``trio.Cancelled._create()``, or one caught from an
    inner scope and raised again later): no scope would catch it on its way up, and it
    would end the whole server. It is that handler's error.
    """
    return not (isinstance(exc, trio.Cancelled) and cancelled_from_above())


def cancelled_from_above() -> bool:
    """True when a scope around the calling task is cancelled, so a ``Cancelled``
    raised here has a scope that will catch it."""
    return trio.current_effective_deadline() == -math.inf


# -- log rate limiting --------------------------------------------------------------

#: Per kind of record, at most this many records per :data:`LOG_WINDOW` seconds are
#: written; the rest are counted and summed up in one "suppressed" line.
LOG_BURST = 5
LOG_WINDOW = 10.0


class RateLimitFilter(logging.Filter):
    """A logging filter that lets at most ``burst`` records of each kind through per
    ``window`` seconds (real time) and sums up the rest.

    A record takes part when it carries ``extra={"rate_limit": KIND}``; others pass
    untouched. When a kind's window ends with records suppressed, the next record of
    that kind is preceded by one WARNING ``suppressed N similar log record(s) (KIND)
    in the last W s``; :meth:`flush` writes the pending summaries (a server calls it
    when it stops). Counters in the statistics stay exact: only the log is limited.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = LOG_BURST,
        window: float = LOG_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._logger = logger
        self.burst = burst
        self.window = window
        self._clock = clock
        # kind -> [window start, records let through, records suppressed]
        self._kinds: dict[str, list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Let the record through unless its kind is over its budget."""
        kind = getattr(record, "rate_limit", None)
        if kind is None:
            return True
        now = self._clock()
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.window:
            if state is not None and state[2]:
                self._summary(kind, int(state[2]))
            self._kinds[kind] = [now, 1, 0]
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False

    def flush(self) -> None:
        """Write the summary of every kind with suppressed records now."""
        for kind, state in list(self._kinds.items()):
            if state[2]:
                self._summary(kind, int(state[2]))
            del self._kinds[kind]

    def _summary(self, kind: str, count: int) -> None:
        self._logger.warning(
            "suppressed %d similar log record(s) (%s) in the last %g s",
            count,
            kind,
            self.window,
        )


def rate_limited(kind: str) -> dict[str, object]:
    """The ``extra=`` of a log record limited by :class:`RateLimitFilter` as ``kind``."""
    return {"rate_limit": kind}


_logger = logging.getLogger("triosrv")
#: The filter on the ``triosrv`` logger (every triosrv module logs there).
LOG_LIMIT = RateLimitFilter(_logger)
_logger.addFilter(LOG_LIMIT)
