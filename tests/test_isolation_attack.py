"""Attacks on the isolation rule (triosrv/_isolation.py) found after its fixes landed:
each test is one way in which a handler, a peer or an operator could end or stall the
server. Every attack test ends by checking that a connection opened before it still
echoes."""

from __future__ import annotations

import pytest
import trio

import triosrv
from triosrv._config import BACKENDS
from triosrv.protocols import Echo

from .helpers import connect, receive_until_eof, running_server
from .test_isolation import assert_still_echoes

# -- handlers that raise a Cancelled no scope will catch -----------------------------


async def kept_cancelled() -> trio.Cancelled:
    """A real ``trio.Cancelled``, caught from a cancelled inner scope and kept: raised
    later, outside that scope, nothing is cancelled and no scope catches it."""
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            return exc
    raise AssertionError("the cancelled scope did not cancel")


class KeptCancelledProtocol(Echo):
    """Echo that raises ``KEPT`` (a kept Cancelled) on b"boom"."""

    __slots__ = ()
    KEPT: BaseException | None = None

    def receive_data(self, data: bytes) -> None:
        if data == b"boom" and KeptCancelledProtocol.KEPT is not None:
            raise KeptCancelledProtocol.KEPT
        super().receive_data(data)

    def answer(self, data: bytes, max_bytes: int) -> bytes | None:
        return None if data == b"boom" else super().answer(data, max_bytes)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_attack_protocol_raising_a_kept_cancelled_ends_only_its_connection(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(KeptCancelledProtocol, "KEPT", await kept_cancelled())
    handler = triosrv.protocol_handler(KeptCancelledProtocol)
    async with running_server(handler, backend=backend) as server:
        async with await connect(server) as earlier:
            await assert_still_echoes(earlier)
            async with await connect(server) as bad:
                await bad.send_all(b"boom")
                assert await receive_until_eof(bad) == b""
            await assert_still_echoes(earlier)
        assert server.statistics().handler_errors == 1
        assert server.state == "serving"


@pytest.mark.parametrize("grouped", [False, True])
async def test_attack_async_handler_raising_a_kept_cancelled_is_a_handler_error(
    grouped: bool,
) -> None:
    kept = await kept_cancelled()

    async def handler(conn: triosrv.Connection) -> None:
        async for chunk in conn:
            if chunk == b"boom":
                if grouped:
                    raise BaseExceptionGroup("planted", [kept, ValueError("planted")])
                raise kept
            await conn.send_all(chunk)

    async with running_server(handler) as server:
        async with await connect(server) as earlier:
            async with await connect(server) as bad:
                await bad.send_all(b"boom")
                assert await receive_until_eof(bad) == b""
            await assert_still_echoes(earlier)
        assert server.statistics().handler_errors == 1
        assert server.state == "serving"
