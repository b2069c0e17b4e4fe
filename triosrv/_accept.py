"""Accepting under fd exhaustion: the reserve-fd technique (libuv, Twisted, nginx).

When ``accept()`` fails with EMFILE the kernel still holds the queued connections; a
server that only sleeps and retries leaves those clients hanging until fds free up
(measured here: trio.serve_tcp with RLIMIT_NOFILE 32 and 40 clients left 17 of them in
the backlog). Instead we keep one fd open on ``/dev/null`` for exactly this moment:
release it, which frees one fd number; accept and close the queued connections one by
one, so their clients see a clean close and fail fast; then take the reserve again.
"""

from __future__ import annotations

import os
import socket

from ._isolation import RESOURCE_ERRNOS

# How many queued connections one shedding pass closes at most, so a flood cannot
# keep the loop here for ever.
SHED_LIMIT = 4096


class FdReserve:
    """One spare fd, given up on EMFILE so the accept queue can be shed.

    The owner calls :meth:`close` when the server stops.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        #: The errno that ended the last shedding pass early, if any.
        self.last_error: int | None = None
        self._take()

    def _take(self) -> None:
        try:
            self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in RESOURCE_ERRNOS:
                raise
            self._fd = None  # try again after the next shedding pass

    def shed(self, listener: socket.socket) -> int:
        """Accept and close what is queued on ``listener``; return how many were closed.

        Uses the reserve fd's number while it is released; takes it back at the end.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        closed = 0
        try:
            while closed < SHED_LIMIT:
                conn, _addr = listener.accept()
                conn.close()
                closed += 1
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            # Whatever else accept() says ends this pass, never the server: the accept
            # loop retries after its pause and meets (and counts) the error itself.
            self.last_error = exc.errno
        finally:
            self._take()
        return closed

    def close(self) -> None:
        """Give the reserve fd back for good (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
