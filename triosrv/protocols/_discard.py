"""The discard protocol (RFC 863): throw away every byte received."""

from __future__ import annotations

from ._base import Protocol, bad_max_bytes, data_after_eof

__all__ = ["Discard"]


class Discard(Protocol):
    """Discard (RFC 863): read and throw away everything; never send anything.

    The number of bytes thrown away is counted in :attr:`bytes_discarded`. When the
    peer sends EOF, :attr:`close_after_flush` becomes true.

    Attributes:
        bytes_discarded (int): how many bytes the peer has sent so far.
    """

    __slots__ = ("_eof", "bytes_discarded")

    def __init__(self) -> None:
        self.bytes_discarded = 0
        self._eof = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Count and drop *data*; ``b""`` means the peer sent EOF.

        Raises:
            ValueError: if called after EOF was already received.
        """
        if self._eof:
            raise data_after_eof(self)
        # nbytes, not len(): a memoryview of a non-byte format counts items.
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size:
            self.bytes_discarded += size
        else:
            self._eof = True

    def data_to_send(self, max_bytes: int) -> bytes:
        """Return ``b""``: discard never sends.

        Raises:
            ValueError: if *max_bytes* is less than 1.
        """
        if max_bytes < 1:
            raise bad_max_bytes(max_bytes)
        return b""

    def answer(self, data: bytes, max_bytes: int) -> bytes | None:
        """The fast path (see :mod:`triosrv.protocols._base`): count *data* and return
        ``b""`` (nothing to send); ``None`` after EOF, so that ``receive_data`` raises.
        """
        if self._eof:
            return None
        self.bytes_discarded += len(data)  # bytes, by the contract
        return b""

    @property
    def close_after_flush(self) -> bool:
        """True once the peer has sent EOF."""
        return self._eof
