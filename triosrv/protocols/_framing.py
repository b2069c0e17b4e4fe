"""Sans-IO framers: split a byte stream into frames, and build frames to send.

Theory of operation
-------------------

A TCP stream has no message boundaries: one ``recv`` may hold half a frame, or ten
frames and a half. A *framer* is the small state machine that restores them, for one
direction of one connection. Like every protocol in this package it never touches a
socket or a clock (this is h11's design, and the sketch of python-trio/trio#796): the
caller feeds it the bytes it received and asks it for frames. Every framer has the
same four members:

``receive_data(data)``
    Append the bytes the peer sent, in order. ``b""`` means the peer sent EOF. Data
    after EOF is a driver bug (:exc:`ValueError`). Once the framer has failed (see
    below), data is dropped: the stream can no longer be understood.

``next_frame()``
    The next complete frame's payload as ``bytes``; or :data:`NEED_DATA` when the
    buffer holds only the beginning of a frame and more bytes are needed; or
    :data:`END_OF_STREAM` once the peer sent EOF exactly at a frame boundary. It raises
    a :exc:`FramingError` when the bytes can never become a valid frame:
    :exc:`FrameTooLongError` (over ``max_length``), :exc:`MalformedFrameError` (not
    this framing at all) or, at EOF in the middle of a frame, :exc:`IncompleteFrameError`.
    The error is sticky: every later call raises it again, and the buffer is freed.

``frame(payload)``
    The bytes to send for one frame whose payload is *payload* (it raises
    :exc:`ValueError` for a payload this framing cannot carry: too long, or holding
    the delimiter).

``buffered``
    How many received bytes are held and not yet returned as frames.

Every driver runs this loop::

    while True:
        data = await stream.receive_some(chunk_size)
        framer.receive_data(data)                 # b"" at EOF
        while (frame := framer.next_frame()) is not NEED_DATA:
            if frame is END_OF_STREAM:
                return
            handle(frame)                         # a FramingError ends the loop

Guarantees, which the tests check with hypothesis:

* **Chunking does not matter.** Every decision -- a frame, or an error -- depends only
  on the bytes of the stream, never on how they were cut into chunks: a framer decides
  as soon as the bytes it has make the answer certain, and more bytes never change it.
  So any chunking of the same bytes gives the same frames followed by the same error.
* **Memory is bounded.** A frame longer than ``max_length`` is refused as soon as that
  is certain (a line with no delimiter in its first ``max_length`` bytes, a length
  prefix over the limit), before its payload is buffered. Under the loop above the
  buffer never holds more than one unfinished frame (at most ``max_length`` plus its
  header) and the last chunk received.
* **Round trip.** ``next_frame`` returns, in order, the payloads given to ``frame``.

What to do with an error is the protocol's choice, but the usual one is to send a
reply that says what was wrong, and close (the framer cannot find the next frame
boundary after an error, so reading on would be guessing).
"""

from __future__ import annotations

import abc
import enum
from typing import ClassVar

__all__ = [
    "END_OF_STREAM",
    "NEED_DATA",
    "FrameTooLongError",
    "Framer",
    "FramingError",
    "IncompleteFrameError",
    "MalformedFrameError",
    "NoFrame",
]


class NoFrame(enum.Enum):
    """What :meth:`Framer.next_frame` returns when it has no frame to give."""

    #: The buffer holds no complete frame; feed more bytes with ``receive_data``.
    NEED_DATA = "NEED_DATA"
    #: The peer sent EOF at a frame boundary: every frame has been returned.
    END_OF_STREAM = "END_OF_STREAM"

    def __repr__(self) -> str:
        return self.value


#: ``next_frame()``: no complete frame is buffered; feed more bytes with ``receive_data``.
NEED_DATA = NoFrame.NEED_DATA
#: ``next_frame()``: the peer sent EOF at a frame boundary; every frame has been returned.
END_OF_STREAM = NoFrame.END_OF_STREAM


class FramingError(ValueError):
    """The received bytes are not (and can never become) the next valid frame.

    The base class of :exc:`FrameTooLongError`, :exc:`MalformedFrameError` and
    :exc:`IncompleteFrameError`. The message is one line that can be sent to the peer
    as it is (it holds no payload bytes).
    """


class FrameTooLongError(FramingError):
    """A frame is longer than the framer's ``max_length`` (refused before it is buffered).

    Attributes:
        max_length (int): the limit.
        length (int | None): the length the peer announced, when the framing announces
            it (a length prefix or netstring); None for a line (only known to be longer).
    """

    def __init__(self, max_length: int, length: int | None = None, *, what: str = "frame") -> None:
        self.max_length = max_length
        self.length = length
        size = f" of {length} bytes" if length is not None else ""
        super().__init__(f"{what}{size} is longer than the limit of {max_length} bytes")


class MalformedFrameError(FramingError):
    """The bytes do not follow the framing (a bad length prefix, a bare CR, ...)."""


class IncompleteFrameError(FramingError):
    """The peer sent EOF in the middle of a frame.

    Attributes:
        received (int): how many bytes of the unfinished frame had arrived.
    """

    def __init__(self, received: int, *, what: str = "frame") -> None:
        self.received = received
        unit = "byte" if received == 1 else "bytes"
        super().__init__(f"the peer closed the stream {received} {unit} into a {what}")


class Framer(abc.ABC):
    """The common interface of the framers; see the module docstring.

    A subclass implements :meth:`extract_frame` (take one frame from the front of the
    buffer) and :meth:`frame`, and may name its frames in ``frame_name`` (for the
    messages of the errors). An instance serves one direction of one
    connection (receiving) and can build frames for the other; it is not thread-safe.
    """

    __slots__ = ("_buffer", "_eof", "_error")

    #: The longest payload a frame may have, in bytes.
    max_length: int

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._error: FramingError | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append *data* received from the peer; ``b""`` means the peer sent EOF.

        The bytes are copied. After an error they are dropped.

        Raises:
            ValueError: if called after EOF was already received (a driver bug).
        """
        if self._eof:
            raise ValueError(
                f"{type(self).__name__}.receive_data() called after EOF (b'') was already "
                "received; the driver must stop receiving once the peer has sent EOF"
            )
        if not data:
            self._eof = True
        elif self._error is None:
            self._buffer += data

    def next_frame(self) -> bytes | NoFrame:
        """Return the next frame's payload, :data:`NEED_DATA` or :data:`END_OF_STREAM`.

        Raises:
            FrameTooLongError: the next frame is over ``max_length``.
            MalformedFrameError: the next bytes do not follow the framing.
            IncompleteFrameError: the peer sent EOF in the middle of a frame.
        """
        if self._error is not None:
            raise self._error
        try:
            frame = self.extract_frame(self._buffer)
            if frame is not None:
                return frame
            if not self._eof:
                return NEED_DATA
            if self._buffer:
                raise IncompleteFrameError(len(self._buffer), what=self.frame_name)
            return END_OF_STREAM
        except FramingError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: FramingError) -> None:
        # Sticky, and the buffer is freed: nothing after a bad frame can be trusted.
        self._error = exc
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """How many received bytes are held and not yet returned as frames."""
        return len(self._buffer)

    @property
    def eof(self) -> bool:
        """True once ``receive_data(b"")`` was called."""
        return self._eof

    #: What the error messages call a frame ("line", "netstring").
    frame_name: ClassVar[str] = "frame"

    @abc.abstractmethod
    def extract_frame(self, buffer: bytearray) -> bytes | None:
        """Remove the first frame from the front of *buffer*; return its payload.

        *buffer* holds the bytes received and not yet taken (the framer's own buffer:
        delete what the frame used). Return None, leaving *buffer* as it is, when it
        holds only the beginning of a frame. Called by :meth:`next_frame`, which deals
        with EOF and errors; not meant to be called directly.

        It must decide from the bytes alone -- never from how many happen to be
        buffered past the frame -- and raise as soon as the answer is certain (see
        "Chunking does not matter" in the module docstring).

        Raises:
            FrameTooLongError: the frame is, or will certainly be, over ``max_length``.
            MalformedFrameError: the bytes can never become a valid frame.
        """

    @abc.abstractmethod
    def frame(self, payload: bytes | bytearray | memoryview) -> bytes:
        """Return the bytes that carry *payload* as one frame.

        Raises:
            ValueError: the framing cannot carry this payload (too long, say).
        """


def check_max_length(max_length: int, ceiling: int | None = None) -> int:
    """Validate a ``max_length`` argument (an int >= 0, at most *ceiling*)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"max_length must be an int, got {max_length!r}")
    if max_length < 0 or (ceiling is not None and max_length > ceiling):
        top = "" if ceiling is None else f" and <= {ceiling}"
        raise ValueError(f"max_length must be >= 0{top}, got {max_length}")
    return max_length


def payload_too_long(length: int, max_length: int) -> ValueError:
    """The error of ``frame()`` for a payload over the limit."""
    return ValueError(f"payload of {length} bytes is over max_length={max_length}")
