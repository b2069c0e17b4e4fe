"""Test helpers: start a server on loopback, talk to it as a client."""

from __future__ import annotations

import contextlib
import logging
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import trio
import trio.testing

import triosrv
from triosrv._server import Handler
from triosrv.protocols import Echo
from triosrv.testing import open_test_server, wait_for


class StrictEcho(Echo):
    """Echo whose ``answer`` checks what every driver vouches for (see
    triosrv.protocols._base): ``bytes``, no longer than ``max_bytes``."""

    __slots__ = ()

    def answer(self, data: bytes, max_bytes: int) -> bytes | None:
        if type(data) is not bytes or len(data) > max_bytes:
            raise AssertionError(
                f"answer() got a {type(data).__name__} of {len(data)} bytes, max_bytes={max_bytes}"
            )
        return super().answer(data, max_bytes)


async def send_in_pieces(
    peer: trio.abc.HalfCloseableStream, wire: bytes, pieces: Iterable[tuple[int, float]]
) -> None:
    """Send ``wire`` on ``peer`` in pieces of the given sizes, each ``(size, pause)``
    pausing that many seconds after its piece (tests run it in virtual time), then the
    rest, then EOF."""
    rest = wire
    for size, pause in pieces:
        await peer.send_all(rest[:size])
        rest = rest[size:]
        if pause:
            await trio.sleep(pause)
    await peer.send_all(rest)
    await peer.send_eof()


class _Closable(Protocol):
    async def aclose(self) -> None: ...


R = TypeVar("R", bound=_Closable)


def receive_dripped_with_timeouts(
    wire: bytes,
    chunk_delays: Sequence[tuple[int, int]],
    timeouts: Sequence[int],
    wrap: Callable[[trio.abc.Stream], R],
    receive_one: Callable[[R], Awaitable[bytes | None]],
) -> list[bytes]:
    """In virtual time: a peer sends ``wire`` in pieces (``(size, pause seconds)``
    each), then the rest and EOF; over our end wrapped by ``wrap``, ``receive_one``
    runs under a deadline from ``timeouts`` in turn, retried after each timeout, until
    it returns None (the end). Returns what the receives returned, in order."""

    async def main() -> list[bytes]:
        peer, ours = trio.testing.memory_stream_pair()
        receiver = wrap(ours)

        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_in_pieces, peer, wire, chunk_delays)
            attempt = 0
            while True:
                with trio.move_on_after(timeouts[attempt % len(timeouts)]):
                    item = await receive_one(receiver)
                    if item is None:
                        break
                    got.append(item)
                attempt += 1
        await receiver.aclose()
        await peer.aclose()
        return got

    result: list[bytes] = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result


@contextlib.asynccontextmanager
async def running_server(
    handler: Handler | str = "echo", **config: Any
) -> AsyncIterator[triosrv.Server]:
    """``triosrv.testing.open_test_server`` (127.0.0.1:0, grace 0, leak check), yielding
    the ``Server`` itself, as most tests here talk to it; on exit no triosrv task is left."""
    async with open_test_server(handler, **config) as running:
        yield running.server
    assert running.server.state == "closed"
    assert triosrv_tasks() == []


def triosrv_tasks() -> list[str]:
    """Names of the live tasks that triosrv started (call from inside trio)."""
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        if task.name.startswith("triosrv "):
            names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return names


def tcp_port(server: triosrv.Server) -> int:
    return int(server.addresses[0].rsplit(":", 1)[1])


async def connect(server: triosrv.Server) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", tcp_port(server))


async def echo_exchange(
    server: triosrv.Server, payload: bytes, *, half_close: bool, chunk: int = 65536
) -> bytes:
    """Send ``payload`` while reading the echo; return what came back."""
    received = bytearray()
    async with await connect(server) as stream:

        async def send() -> None:
            view = memoryview(payload)
            for start in range(0, len(payload), chunk):
                await stream.send_all(view[start : start + chunk])
            if half_close:
                await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while half_close or len(received) < len(payload):
                data = await stream.receive_some(65536)
                if not data:
                    break
                received += data
    return bytes(received)


async def receive_exactly(
    stream: trio.abc.ReceiveStream, size: int, *, timeout: float = 5
) -> bytes:
    """The next ``size`` bytes from the peer; fails at EOF or after ``timeout`` seconds."""
    received = bytearray()
    with trio.fail_after(timeout):
        while len(received) < size:
            chunk = await stream.receive_some(size - len(received))
            assert chunk, f"EOF after {len(received)} of {size} bytes"
            received += chunk
    return bytes(received)


async def receive_until_eof(stream: trio.abc.ReceiveStream, *, timeout: float = 5) -> bytes:
    """Everything the peer sends until it closes; fails after ``timeout`` seconds."""
    received = bytearray()
    with trio.fail_after(timeout):
        while chunk := await stream.receive_some():
            received += chunk
    return bytes(received)


async def wait_until_no_connection(server: triosrv.Server, *, timeout: float = 3) -> None:
    """Wait (real time) until the server is done with every connection it accepted."""
    await wait_for(lambda: not server.statistics().active, timeout=timeout)


def random_payload(rng: random.Random, max_size: int) -> bytes:
    return rng.randbytes(rng.randint(1, max_size))


async def echo_all_at_once(
    server: triosrv.Server, payloads: list[bytes], *, half_close: bool
) -> triosrv.ServerStatistics:
    """One client per payload, all at once; assert every one got exactly its bytes back
    and that the byte counters add up; return the server's statistics after."""
    results: dict[int, bytes] = {}

    async def client(i: int) -> None:
        results[i] = await echo_exchange(server, payloads[i], half_close=half_close)

    async with trio.open_nursery() as nursery:
        for i in range(len(payloads)):
            nursery.start_soon(client, i)
    stats = server.statistics()
    assert all(results[i] == payloads[i] for i in range(len(payloads)))
    assert stats.accepted == len(payloads)
    assert stats.bytes_received == sum(map(len, payloads))
    assert stats.bytes_sent == stats.bytes_received
    return stats


@attrs.define
class Counter:
    value: int = 0


async def check_one_failure_is_isolated(
    server: triosrv.Server, caplog: Any, *, others: int
) -> None:
    """``others`` clients keep echoing while one sending b"boom" is closed by the server;
    the failure is counted once and logged once, with the peer and a traceback."""
    streams = [await connect(server) for _ in range(others)]
    for stream in streams:
        await stream.send_all(b"hello")
        assert await stream.receive_some() == b"hello"
    async with await connect(server) as bad:
        await bad.send_all(b"boom")
        with trio.fail_after(3):
            assert await bad.receive_some() == b""  # closed by the server
    for stream in streams:  # the others still serve
        await stream.send_all(b"again")
        assert await stream.receive_some() == b"again"
        await stream.aclose()
    assert server.statistics().handler_errors == 1
    records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(records) == 1
    assert "127.0.0.1:" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert "planted failure" in caplog.text


class ListenProcess:
    """A ``triosrv listen`` subprocess and what its log (stderr) said so far."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.log = bytearray()

    async def read_log_until(self, text: bytes, timeout: float = 10) -> None:
        """Read the log until ``text`` appears; fail if the server exits first."""
        assert self.process.stderr is not None
        with trio.fail_after(timeout):
            while text not in self.log:
                chunk = await self.process.stderr.receive_some()
                if not chunk:
                    raise AssertionError(f"server exited; log:\n{self.log.decode()}")
                self.log += chunk

    def logged_value(self, prefix: bytes) -> str:
        """The rest of the first log line containing ``prefix``, after it."""
        return self.log.split(prefix, 1)[1].split(b"\n", 1)[0].decode().strip()

    @property
    def address(self) -> str:
        """The first listener's address, ``tcp://HOST:PORT``."""
        return self.logged_value(b"listening on ")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    async def wait_exit(self, timeout: float) -> int:
        """Read the rest of the log and return the exit code."""
        assert self.process.stderr is not None
        with trio.fail_after(timeout):
            while chunk := await self.process.stderr.receive_some():
                self.log += chunk
            return await self.process.wait()


@contextlib.asynccontextmanager
async def listen_process(
    *args: str,
    ready: bytes = b"listening on tcp://",
    server_type: type[ListenProcess] = ListenProcess,
) -> AsyncIterator[ListenProcess]:
    """``triosrv listen --port 0 ARGS`` once its log says ``ready``; killed by PID on exit."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "triosrv", "listen", "--port", "0", *args], stderr=subprocess.PIPE
    )
    server = server_type(process)
    try:
        await server.read_log_until(ready)
        yield server
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        assert process.stderr is not None
        await process.stderr.aclose()
