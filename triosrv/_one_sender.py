"""The trio Stream contract's one-sender rule, for the streams triosrv implements.

trio's :class:`~trio.abc.SendStream` says two tasks sending at once is a
:exc:`trio.BusyResourceError`. A wrapper must enforce it itself: the stream it wraps
may not notice (trio's lockstep memory streams don't), and a second sender would
interleave its bytes with the first's. :class:`BufferedStream` and
:class:`StreamConnection` share this guard; :class:`SocketConnection` checks inline,
on its per-call hot path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import trio


class OneSender:
    """Mixin: :meth:`_send_guard` around every sending operation.

    The class sets ``self._sending = False`` in its ``__init__``.
    """

    _sending: bool

    @contextlib.contextmanager
    def _send_guard(self) -> Iterator[None]:
        # BusyResourceError for a second sender; the flag is cleared however the
        # operation ends (cancelled, timed out, broken).
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            yield
        finally:
            self._sending = False
